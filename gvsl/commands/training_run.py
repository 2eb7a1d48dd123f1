"""What ``gvsl pretrain`` and ``gvsl finetune`` share on the command line: start or resume a run, and turn the
errors a user can meet into one line and an exit status. The modules that import torch are imported where they are
used, so a command's ``--help`` needs no torch."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from gvsl.train.config import PRECISIONS, RunConfig, config_from_arguments


def add_run_arguments(parser: argparse.ArgumentParser, config_class: type[RunConfig]) -> None:
    """The flags of how a run runs (device, precision, loading, checkpoints, reporting), with ``config_class``'s
    defaults in their help; unset flags stay absent so a config file and a resumed run's settings apply."""
    s = argparse.SUPPRESS
    default = {f.name: f.default for f in dataclasses.fields(config_class)}
    parser.add_argument("--device", default=s, help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")
    parser.add_argument("--precision", choices=PRECISIONS, default=s,
                        help="auto: bf16 on GPUs that support it, else fp16 with a loss scaler; fp32 on CPU/MPS")
    parser.add_argument("--workers", type=int, default=s, help=f"data loading processes (default {default['workers']})")
    parser.add_argument("--checkpoint-every", type=int, default=s,
                        help=f"iterations between checkpoints ({default['checkpoint_every']})")
    parser.add_argument("--keep-checkpoints", type=int, default=s,
                        help=f"how many recent checkpoints to keep ({default['keep_checkpoints']})")
    parser.add_argument("--log-every", type=int, default=s,
                        help=f"iterations between progress events ({default['log_every']})")
    boolean = argparse.BooleanOptionalAction
    parser.add_argument("--tensorboard", action=boolean, default=s, help="TensorBoard scalars and panels (on)")
    parser.add_argument("--progress", action=boolean, default=s, help="console progress bar (on)")


def reuse_note(args: argparse.Namespace) -> str:
    """For a new run that failed before its first checkpoint: that its folder can be given to ``--out`` again."""
    from gvsl.train.state import list_checkpoints

    out = getattr(args, "out", None)
    if args.resume is not None or out is None or not Path(out).is_dir() or list_checkpoints(out):
        return ""
    return f" (nothing was trained: {out} holds no checkpoint and can be given to --out again)"


def note_printer(command: str) -> Callable[[dict], None]:
    """An event listener that prints, as plain lines on stderr, the ``warnings`` of a run's start event, the
    progress of matching an unlabelled collection (``pseudo_labels``) and the scans it left out."""
    def print_notes(event: dict) -> None:
        kind = event.get("event")
        notes = event.get("warnings", []) if kind == "start" else event.get("notes", []) if kind == "collection_notes" \
            else []
        for note in notes:
            print(f"gvsl {command}: note: {note}", file=sys.stderr)
        if kind == "pseudo_labels":
            print(f"gvsl {command}: matching {event['done']}/{event['total']} scans"
                  + (f" ({event['scan']} done)" if event.get("scan") else ""), file=sys.stderr, flush=True)
    return print_notes


def start_run(command: str, args: argparse.Namespace, config_class: type[RunConfig],
              run: Callable[..., Any], note: Callable[[argparse.Namespace], str] = reuse_note
              ) -> tuple[Optional[Any], int]:
    """``run(config, resume=..., on_event=...)`` with the configuration from ``args``; returns (its result, 0) on
    the process that reports (rank 0), else (None, exit status: 0 on other ranks, 1 for an error, with ``note``'s
    advice, 130 for a second stop). The notes of the run's start event are printed as they come."""
    from gvsl.train.distributed import context_from_environment
    from gvsl.train.run import TrainingError

    try:
        result = run(config_from_arguments(args, config_class), resume=args.resume is not None,
                     on_event=note_printer(command))
    except (ValueError, TrainingError, OSError) as exc:
        print(f"gvsl {command}: error: {exc}{note(args)}", file=sys.stderr)
        return None, 1
    except KeyboardInterrupt:
        print(f"gvsl {command}: interrupted without saving (second stop signal)", file=sys.stderr)
        return None, 130
    return (result, 0) if context_from_environment().is_main else (None, 0)
