"""The ``gvsl`` command line itself: quick start-up and one syntax for shared options."""
from __future__ import annotations

import subprocess
import sys

import pytest

from gvsl.cli import build_parser


@pytest.mark.parametrize("argv, shown", [(["--help"], ["scan", "finetune"]), (["pretrain", "--help"], ["--resume"]),
                                          (["finetune", "--help"], ["--compare", "--val-data", "random-linear"])])
def test_help_imports_none_of_the_commands_dependencies(argv, shown):
    """``gvsl --help`` lists every command, and ``gvsl pretrain --help`` and ``gvsl finetune --help`` their options,
    without importing torch, MONAI, SimpleITK or pydicom (they take seconds to import; a command imports what it
    needs when it runs)."""
    code = (f"import sys\nfrom gvsl.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'monai', 'SimpleITK', 'pydicom') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert all(word in done.stdout for word in shown)
    assert done.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("command, required", [
    ("prepare", ["SRC", "--cache", "CACHE"]), ("pretrain", ["DATA", "--out", "RUN"]),
    ("finetune", ["DATA", "--out", "RUN"]), ("match", ["F", "M", "--checkpoint", "C", "--out", "OUT"])])
@pytest.mark.parametrize("spacing, expected", [
    (["2"], (2.0, 2.0, 2.0)), (["1.5,1.5,3"], (1.5, 1.5, 3.0)), (["1.5", "1.5", "3"], (1.5, 1.5, 3.0))])
def test_every_spacing_option_takes_one_size_a_list_or_three_numbers(command, required, spacing, expected):
    args = build_parser([command]).parse_args([command, "--spacing", *spacing, *required])
    assert tuple(args.spacing) == expected
