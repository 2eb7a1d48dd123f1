"""The ``gvsl`` command: one sub-command per module in ``gvsl.commands``.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int`` (the exit status).
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ("scan", "prepare", "pretrain", "match", "finetune", "segment", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gvsl", description="GVSL: self-supervised pre-training, matching, fine-tuning and segmentation of 3D "
                                 "CT/MR (Geometric Visual Similarity Learning, He et al., CVPR 2023).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        # Imported when the parser is built, not at `import gvsl.cli`, so importing the package stays cheap.
        module = importlib.import_module(f"gvsl.commands.{name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
