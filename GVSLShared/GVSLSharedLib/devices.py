"""The devices the backend can run on, as torch reports them, asked in a separate process (never in Slicer's).

``device_query_command`` prints one JSON object (``{"torch": version, "cuda": [GPU names], "mps": bool}``);
``device_choices`` turns it into the device combo box's entries, (value for ``--device``, text shown), "auto" first.
Before the answer (or without torch) the choices are ``BASIC_CHOICES``.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .jobs import Job
from .runs import BackgroundProcess

AUTO = "auto"
BASIC_CHOICES: list[tuple[str, str]] = [(AUTO, "auto (CUDA, then Apple MPS, then CPU)"), ("cpu", "CPU")]
QUERY = ("import json, torch\n"
         "mps = getattr(torch.backends, 'mps', None)\n"
         "print(json.dumps({'torch': torch.__version__,\n"
         "                  'cuda': [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],\n"
         "                  'mps': bool(mps and mps.is_available())}))\n")
ANSWER_NAME = "devices.json"


def device_query_command() -> list[str]:
    """The command line that prints what torch sees (run with Slicer's Python, in its own process)."""
    return [sys.executable, "-c", QUERY]


def start_device_query(folder: os.PathLike) -> Job:
    """Ask torch in the background; the job's ``answer`` is the file its JSON goes to."""
    folder = Path(folder)
    answer = folder / ANSWER_NAME
    return Job(BackgroundProcess(device_query_command(), folder / "devices.log", answer), folder, answer=answer)


def device_choices(answer: str) -> list[tuple[str, str]]:
    """The combo box's entries for a device query's output: auto, the CPU, each CUDA GPU, Apple MPS."""
    found = json.loads(answer)
    gpus = [(f"cuda:{index}", f"GPU {index}: {name}") for index, name in enumerate(found.get("cuda", []))]
    mps = [("mps", "Apple MPS")] if found.get("mps") else []
    return [*BASIC_CHOICES, *gpus, *mps]
