import sys

from gvsl.cli import run_process

sys.exit(run_process())
