"""What ``gvsl pretrain`` and ``gvsl finetune`` share on the command line: start or resume a run, and turn the
errors a user can meet into one line and an exit status."""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Optional

from gvsl.train.config import RunConfig, config_from_arguments
from gvsl.train.distributed import context_from_environment
from gvsl.train.engine import TrainingError


def start_run(command: str, args: argparse.Namespace, config_class: type[RunConfig],
              run: Callable[..., Any]) -> tuple[Optional[Any], int]:
    """``run(config, resume=...)`` with the configuration from ``args``; returns (its result, 0) on the process
    that reports (rank 0), else (None, exit status: 0 on other ranks, 1 for an error, 130 for a second stop)."""
    try:
        result = run(config_from_arguments(args, config_class), resume=args.resume is not None)
    except (ValueError, TrainingError, OSError) as exc:
        print(f"gvsl {command}: error: {exc}", file=sys.stderr)
        return None, 1
    except KeyboardInterrupt:
        print(f"gvsl {command}: interrupted without saving (second stop signal)", file=sys.stderr)
        return None, 130
    return (result, 0) if context_from_environment().is_main else (None, 0)
