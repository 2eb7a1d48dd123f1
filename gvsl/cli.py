"""The ``gvsl`` command: one sub-command per module in ``gvsl.commands``.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int`` (the exit status).
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ("scan", "prepare", "pretrain", "match", "finetune", "segment", "demo")


def available_commands() -> dict[str, object]:
    """The command modules that exist in this installation, by name."""
    found = {}
    for name in COMMANDS:
        try:
            found[name] = importlib.import_module(f"gvsl.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"gvsl.commands.{name}":
                raise
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gvsl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in available_commands().items():
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
