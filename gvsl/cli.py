"""The ``gvsl`` command: one sub-command per module in ``gvsl.commands``.

Each command module defines ``add_arguments(parser)`` and ``run(args) -> int`` (the exit status); its one-line
help is in ``COMMANDS``. Only the chosen command's module is imported (each imports what it needs: torch, MONAI,
SimpleITK...), so ``gvsl --help`` and every command start without the others' dependencies.
"""
from __future__ import annotations

import argparse
import faulthandler
import gc
import importlib
import sys
from collections.abc import Callable, Iterable, Sequence

COMMANDS = {
    "scan": "List the series in a DICOM folder tree (grouped by Series Instance UID) and whether each is usable.",
    "prepare": "Preprocess the usable CT/MR series of a DICOM collection (or volume files) into a training cache.",
    "pretrain": "pre-train GVSL on unlabeled CT/MR (a DICOM folder, a folder of volumes, or a prepared cache)",
    "match": "Register two scans with a GVSL network: ITK transform, warped moving image, metrics, propagated labels.",
    "finetune": "fine-tune a pre-trained GVSL model into a segmentation model from labelled images",
    "segment": "segment a CT/MR volume with a fine-tuned model (label map + label table, in the input's geometry; "
               "a DICOM SEG too for a DICOM series)",
    "demo": "run the whole pipeline on a small public sample (MNI152 heads as DICOM) in a few minutes on CPU",
}


SPACING_FLAG = "--spacing"


def join_spacing(argv: Sequence[str]) -> list[str]:
    """``--spacing X Y Z`` (three numbers) written as ``--spacing X,Y,Z``: every command's ``--spacing`` takes one
    value, "MM" or "X,Y,Z", and also the three-number form."""
    out, words = [], list(argv)
    while words:
        word = words.pop(0)
        out.append(word)
        if word == SPACING_FLAG and len(words) >= 3 and all(_is_number(w) for w in words[:3]):
            out.append(",".join(words[:3]))
            del words[:3]
    return out


def _is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


class GvslArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` (sub-command parsers included) that accepts ``--spacing X Y Z`` (``join_spacing``)."""

    def parse_known_args(self, args=None, namespace=None):
        return super().parse_known_args(join_spacing(sys.argv[1:] if args is None else args), namespace)


def build_parser(commands: Iterable[str] = COMMANDS) -> argparse.ArgumentParser:
    """The ``gvsl`` parser: every command is listed; the arguments of ``commands`` (all by default) are added,
    which imports their modules."""
    parser = GvslArgumentParser(
        prog="gvsl", description="GVSL: self-supervised pre-training, matching, fine-tuning and segmentation of 3D "
                                 "CT/MR (Geometric Visual Similarity Learning, He et al., CVPR 2023).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = set(commands)
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name in wanted:
            p.set_defaults(_run=add_command_arguments(p, name))
    return parser


def add_command_arguments(parser: argparse.ArgumentParser, name: str) -> Callable[[argparse.Namespace], int]:
    """Add the arguments of the command ``name`` to ``parser`` (importing its module; also for a script that takes
    a command's options) and return the command's ``run``."""
    module = importlib.import_module(f"gvsl.commands.{name}")
    module.add_arguments(parser)
    return module.run


def chosen_command(argv: Sequence[str]) -> list[str]:
    """The command named in ``argv`` (its first word that is not an option), as a list of at most one name."""
    first = next((word for word in argv if not word.startswith("-")), None)
    return [first] if first in COMMANDS else []


def enable_crash_tracebacks() -> None:
    """On a native crash (SIGSEGV, SIGFPE, SIGABRT, SIGBUS, SIGILL: in torch, ITK, a driver...) write the Python
    traceback of every thread to standard error, so that the log holds where it happened rather than only "signal
    11". Left as it is when already enabled (``python -X faulthandler``, ``PYTHONFAULTHANDLER``, pytest); skipped
    when there is no standard error file to write to."""
    if faulthandler.is_enabled():
        return
    for stream in (sys.stderr, sys.__stderr__):
        try:
            faulthandler.enable(stream)
            return
        except (AttributeError, RuntimeError, ValueError, OSError):  # None, or a stream without a file descriptor
            continue


def main(argv: list[str] | None = None) -> int:
    enable_crash_tracebacks()
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(chosen_command(argv)).parse_args(argv)
    return int(args._run(args) or 0)


def run_process() -> int:
    """``main`` as a process of its own (the ``gvsl`` command, ``python -m gvsl``), which ends when it returns.

    The objects alive then are frozen out of the garbage collector: the interpreter's last collections walk every
    object torch created, 0.5-0.8 s of a 5 s ``gvsl segment`` (benchmarks/RESULTS.md). Everything the commands write
    is closed by then; only ``__del__`` of leftover cycles, which Python never promises at exit, is skipped.
    """
    code = main()
    gc.freeze()
    return code
