"""Writing a command's report to standard output when its reader may go away (``gvsl scan --json DIR | head -1``)."""
from __future__ import annotations

import os
import sys

#: Exit status when the reader of standard output went away: 128 + SIGPIPE, what a shell reports for a tool that a
#: closed pipe stopped, so ``set -o pipefail`` scripts see it as they see ``cat`` or ``grep`` there, and distinct
#: from 1 (nothing found, an error) and 2 (no such path).
CLOSED_PIPE_STATUS = 141


def print_report(text: str) -> int:
    """Print ``text`` (and a newline) to standard output; 0, or ``CLOSED_PIPE_STATUS`` without a traceback when the
    reader has closed the pipe."""
    try:
        print(text)
        sys.stdout.flush()  # a reader gone before the end shows here, not in Python's flush at exit
    except BrokenPipeError:
        # Python's documented way out (see the notes on SIGPIPE in the `signal` module): send what is still buffered
        # to devnull, so that the flush at exit does not fail again and print a second error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return CLOSED_PIPE_STATUS
    return 0
