"""A native crash (signal 11 in torch, ITK...) of a ``gvsl`` process or of a process the Slicer modules start leaves a
Python traceback in its output, not only a signal number.

The crashes here are real segmentation faults (reading address 0 through ctypes), caused by the test's own child
scripts: the production code has no crash hook.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "GVSLShared"))
from GVSLSharedLib import runs  # noqa: E402

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX signals")

# A gvsl command whose run() crashes natively: registered in the child only, then run through gvsl.cli.main.
CRASHING_COMMAND = """
import ctypes, sys, types
from gvsl import cli

command = types.ModuleType("gvsl.commands.crash")
command.add_arguments = lambda parser: None
command.run = lambda args: ctypes.string_at(0)
sys.modules[command.__name__] = command
cli.COMMANDS["crash"] = "crash natively"
sys.exit(cli.main(["crash"]))
"""


def environment_without_faulthandler() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key != "PYTHONFAULTHANDLER"}


def test_a_native_crash_in_a_gvsl_command_prints_the_traceback():
    done = subprocess.run([sys.executable, "-c", CRASHING_COMMAND], capture_output=True, text=True, timeout=120,
                          env=environment_without_faulthandler())
    assert done.returncode == -11  # SIGSEGV
    assert "Fatal Python error: Segmentation fault" in done.stderr
    assert "gvsl/cli.py" in done.stderr.replace(os.sep, "/")  # the stack, through gvsl.cli.main


def test_a_native_crash_in_a_process_the_modules_start_leaves_the_traceback_in_its_log(tmp_path):
    crash = tmp_path / "crash.py"
    crash.write_text("import ctypes\n\n\ndef read_nothing():\n    ctypes.string_at(0)\n\n\nread_nothing()\n")
    process = runs.BackgroundProcess([sys.executable, str(crash)], tmp_path / "run.log")
    process.process.wait(timeout=120)
    assert process.poll() == -11
    log = (tmp_path / "run.log").read_text()
    assert "Fatal Python error: Segmentation fault" in log and "read_nothing" in log


@pytest.mark.parametrize("job", ["similarity_job", "sample_job"])
def test_the_modules_jobs_enable_crash_tracebacks_themselves(job):
    """Run by hand (without ``BackgroundProcess``'s environment), the jobs still enable faulthandler."""
    code = (f"import faulthandler, sys\nsys.path.insert(0, {str(ROOT / 'GVSLShared' / 'GVSLSharedLib')!r})\n"
            f"import {job}\ntry:\n    {job}.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(faulthandler.is_enabled())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=environment_without_faulthandler())
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "True"
