"""Run folders and background ``gvsl`` processes, without Qt: the Slicer widget polls these from a timer.

A run folder (``gvsl pretrain --out RUN_DIR``, or ``gvsl finetune``'s) holds ``events.jsonl`` (one JSON
record per line, key ``"event"``), ``config.json``, ``checkpoints/*.pt`` and,
while stopping, ``STOP``. A comparison's folder (``gvsl finetune --compare``) holds one run folder per arm and seed
in ``arms/`` and one event file in which every arm-run's events carry ``"arm"`` (its start and end renamed, so
that only the comparison's own ``end`` ends it). The module never imports the backend (it may not be
installed yet, and it imports torch), so the few names it relies on are
repeated here; a test checks them against ``gvsl.train`` and ``gvsl.finetune.compare``.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

EVENTS_NAME = "events.jsonl"  # gvsl.train.events.EVENTS_NAME
STOP_NAME = "STOP"  # gvsl.train.stopping.STOP_NAME
CHECKPOINT_DIR = "checkpoints"  # gvsl.train.state.CHECKPOINT_DIR
CONFIG_NAME = "config.json"
ARMS_DIR = "arms"  # gvsl.finetune.compare.ARMS_DIR
COMPARISON_START, ARM_START, ARM_END = "comparison_start", "arm_start", "arm_end"  # gvsl.finetune.compare's events
PSEUDO_LABELS = "pseudo_labels"  # fine-tuning with --unlabelled: {"done": K, "total": N, "scan": NAME} per scan matched
PROCESS_LOG_NAME = "slicer-process.log"  # output of the process the module started, in the run folder
FINAL_EVENTS = ("end", "error")
NOT_LOSSES = frozenset({"event", "time", "iteration", "iterations", "lr", "it_per_s", "eta_s", "peak_memory_bytes",
                        "memory_kind", "best_dice"})


def gvsl_command(*args: str) -> list[str]:
    """The command line running ``gvsl ARGS`` with this Python (Slicer's Python inside Slicer)."""
    return [sys.executable, "-m", "gvsl", *args]


AUTO_BATCH = 0  # a batch of 0 in the module stands for ``gvsl pretrain --batch auto`` (planned from GPU memory)


def pretrain_command(data: os.PathLike, run_dir: os.PathLike, *, iterations: int, patch: int, batch: int, lr: float,
                     precision: str, device: str, init: Optional[os.PathLike] = None,
                     flags: Sequence[str] = ()) -> list[str]:
    """``gvsl pretrain DATA --out RUN_DIR ...`` for a new run (``batch``: pairs per iteration, ``AUTO_BATCH`` for
    ``auto``; ``init``: a checkpoint to start from; ``flags``: further options, e.g. a preset's recipe)."""
    args = ["pretrain", str(data), "--out", str(run_dir), "--iterations", str(iterations), "--patch", str(patch),
            "--batch", "auto" if batch == AUTO_BATCH else str(batch), "--lr", repr(float(lr)), "--precision", precision,
            "--device", device,
            "--no-progress"]
    return gvsl_command(*args, *(["--init", str(init)] if init else []), *flags)


def resume_command(run_dir: os.PathLike, command: str = "pretrain") -> list[str]:
    """``gvsl COMMAND --resume RUN_DIR`` (``pretrain`` or ``finetune``): continue from the run's latest checkpoint."""
    return gvsl_command(command, "--resume", str(run_dir), "--no-progress")


def scan_command(path: os.PathLike, modalities: Sequence[str] = ("CT", "MR")) -> list[str]:
    """``gvsl scan PATH --json`` keeping the given modalities."""
    return gvsl_command("scan", str(path), "--json", "--modality", *modalities)


class FileTail:
    """Reads what has been appended to a (growing) file since the last ``read()``, from ``offset`` on."""

    def __init__(self, path: os.PathLike, offset: int = 0):
        self.path = Path(path)
        self.offset = offset

    def read(self, whole_lines: bool = False) -> str:
        """The new text (empty while the file does not exist); ``whole_lines`` leaves a partial last line for later."""
        if not self.path.exists():
            return ""
        with open(self.path, "rb") as file:
            file.seek(self.offset)
            data = file.read()
        if whole_lines:
            data = data[: data.rfind(b"\n") + 1]
        self.offset += len(data)
        return data.decode("utf-8", errors="replace")


def parse_events(text: str) -> list[dict]:
    """The event records in JSON-lines text (lines that are not JSON objects with ``"event"`` are skipped)."""
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "event" in record:
            records.append(record)
    return records


@dataclass
class RunProgress:
    """What the events of one run say so far: state, position, speed, and the loss curves.

    For a comparison (``comparison_start``), ``iteration``, ``iterations`` and the speed are the current arm-run's
    (``arm``), its curves go to ``arm_curves[arm]``, ``arm_results`` keeps each scored arm-run's ``arm_end`` record,
    ``outcome`` the final ``end`` record, and ``fraction`` and ``eta_s`` cover all ``arm_runs``.
    """

    state: str = "new"  # new | running | stopped | finished | failed
    iteration: int = 0
    iterations: Optional[int] = None
    it_per_s: Optional[float] = None
    eta_s: Optional[float] = None
    message: str = ""
    checkpoint: Optional[str] = None
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    arm: Optional[str] = None
    arm_runs: list[str] = field(default_factory=list)
    arm_curves: dict[str, dict[str, list[tuple[int, float]]]] = field(default_factory=dict)
    arm_results: dict[str, dict] = field(default_factory=dict)
    outcome: dict = field(default_factory=dict)

    def add(self, record: dict) -> None:
        """Fold one event record in (unknown events and fields are ignored)."""
        kind = record.get("event")
        arm = record.get("arm")
        if record.get("iteration") is not None:  # 0 too: the start of a comparison's next arm-run
            self.iteration = int(record["iteration"])
        self.iterations = record.get("iterations", self.iterations)
        if arm is not None:
            self.arm = arm
        if kind == COMPARISON_START:
            self.arm_runs = list(record.get("arm_runs", []))
            self.state, self.message = "running", f"comparing {len(self.arm_runs)} runs"
        elif kind in ("start", ARM_START):
            self.state, self.message = "running", f"running on {record.get('device', '?')}"
            if arm is not None:
                position = self.arm_runs.index(arm) + 1 if arm in self.arm_runs else "?"
                self.message = f"{arm} (run {position} of {len(self.arm_runs)}) running on {record.get('device', '?')}"
        elif kind == "iteration":
            self.state = "running"
            self.it_per_s, self.eta_s = record.get("it_per_s"), record.get("eta_s")
            self._add_curves(record, self.curves if arm is None else self.arm_curves.setdefault(arm, {}))
            untouched = len(self.arm_runs) - len(self.arm_results) - 1  # arm-runs after this one
            if arm is not None and untouched > 0 and self.eta_s is not None and self.it_per_s:
                self.eta_s += untouched * (self.iterations or 0) / self.it_per_s
        elif kind == PSEUDO_LABELS:
            self.state = "running"
            self.message = f"matching {record.get('done', 0)}/{record.get('total', '?')} scans" + (
                f" ({record['scan']})" if record.get("scan") else "")
        elif kind == ARM_END:
            self.arm_results[arm] = record
        elif kind == "checkpoint":
            self.checkpoint = record.get("path", self.checkpoint)
        elif kind == "stop":
            self.message = f"stopping ({record.get('reason', 'requested')})"
        elif kind == "end":
            self.state = "stopped" if record.get("stopped") else "finished"
            self.checkpoint = record.get("checkpoint") or self.checkpoint
            self.eta_s = None
            self.outcome = record
            self.message = (f"{self.state} with {len(self.arm_results)} of {len(self.arm_runs)} runs scored"
                            if self.arm_runs else f"{self.state} at iteration {self.iteration}")
        elif kind == "error":
            self.state, self.message = "failed", f"{record.get('type', 'error')}: {record.get('message', '')}"

    def _add_curves(self, record: dict, curves: dict[str, list[tuple[int, float]]]) -> None:
        """The numbers of an iteration record appended to ``curves`` (a mapping of numbers, such as fine-tuning's
        per-class Dice, gives one curve per key: "name/key")."""
        for name, value in record.items():
            if name in NOT_LOSSES:
                continue
            for key, number in value.items() if isinstance(value, dict) else [("", value)]:
                if isinstance(number, (int, float)):
                    curves.setdefault(f"{name}/{key}" if key else name, []).append((self.iteration, float(number)))

    @property
    def fraction(self) -> float:
        """Progress in [0, 1] (0 while the total is unknown); for a comparison, over all its arm-runs."""
        run = min(1.0, self.iteration / self.iterations) if self.iterations else 0.0
        if not self.arm_runs:
            return run
        current = run if self.arm is not None and self.arm not in self.arm_results else 0.0
        return min(1.0, (len(self.arm_results) + current) / len(self.arm_runs))


def format_duration(seconds: Optional[float]) -> str:
    """``1h 02m``, ``3m 05s`` or ``42s``; empty for None."""
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


class RunFolder:
    """A pre-training (or fine-tuning) run folder: its progress (from the event file), process log, checkpoints and
    stop request.

    Everything is read from files, so a run started earlier (or by another Slicer session) is followed the same way.
    """

    def __init__(self, path: os.PathLike):
        self.path = Path(path)
        self.progress = RunProgress()
        self._events = FileTail(self.path / EVENTS_NAME)
        self._log = FileTail(self.path / PROCESS_LOG_NAME)

    def exists(self) -> bool:
        """Whether a run has started here (it has an event file)."""
        return (self.path / EVENTS_NAME).exists()

    def poll(self) -> list[dict]:
        """Fold the new events into ``progress``; returns them."""
        records = parse_events(self._events.read(whole_lines=True))
        for record in records:
            self.progress.add(record)
        return records

    def new_log(self) -> str:
        """Output of the module's ``gvsl pretrain`` processes (``PROCESS_LOG_NAME``) since the last call."""
        return self._log.read()

    def checkpoints(self) -> list[Path]:
        """The run's checkpoint files, oldest first (a comparison's: its arm-runs', run by run)."""
        return sorted((self.path / CHECKPOINT_DIR).glob("*.pt")) + sorted(
            self.path.glob(f"{ARMS_DIR}/*/{CHECKPOINT_DIR}/*.pt"))

    def config(self) -> dict:
        path = self.path / CONFIG_NAME
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}

    def request_stop(self) -> None:
        """Ask the training loop to save a checkpoint and exit (it polls for the ``STOP`` file)."""
        (self.path / STOP_NAME).touch()


class BackgroundProcess:
    """A child process in its own process group (session on POSIX), its output in a log file (appended to, after
    a ``$ command`` line). A Python child runs with ``PYTHONFAULTHANDLER=1``: if it crashes natively (signal 11...),
    the log ends with the Python traceback of each of its threads.

    With ``stdout_path``, standard output goes there (e.g. ``gvsl scan --json``) and only errors to the log.

    ``poll()`` never blocks. ``stop()`` asks politely first (the caller's ``request_stop`` callback, e.g. writing
    ``STOP``), and ``kill_if_overdue()``, called from the same timer as ``poll()``, ends the whole process tree
    once ``grace_s`` has passed.
    """

    def __init__(self, command: Sequence[str], log_path: os.PathLike, stdout_path: Optional[os.PathLike] = None):
        self.command = list(command)
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._files = [open(self.log_path, "ab")]
        self._log = FileTail(self.log_path, offset=self.log_path.stat().st_size)
        self._files[0].write(f"$ {shlex.join(self.command)}\n".encode())
        self._files[0].flush()
        if stdout_path is not None:
            self._files.append(open(stdout_path, "wb"))
        options = ({"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if os.name == "nt"
                   else {"start_new_session": True})
        # PYTHONFAULTHANDLER: a native crash of the child (Python) writes its threads' tracebacks to the log.
        self.process = subprocess.Popen(self.command, stdout=self._files[-1],
                                        stderr=self._files[0] if stdout_path is not None else subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONFAULTHANDLER": "1"},
                                        **options)
        self._kill_at: Optional[float] = None

    def poll(self) -> Optional[int]:
        """The exit status, or None while running."""
        code = self.process.poll()
        if code is not None:
            for file in self._files:
                file.close()
        return code

    def new_output(self) -> str:
        """Output written to the log since the last call."""
        return self._log.read()

    def stop(self, grace_s: float = 60.0) -> None:
        """Schedule a kill of the process tree ``grace_s`` from now (0: now)."""
        self._kill_at = time.monotonic() + grace_s
        self.kill_if_overdue()

    def kill_if_overdue(self) -> bool:
        """Kill the process tree if a stop is overdue and it still runs; returns whether it killed."""
        if self._kill_at is None or time.monotonic() < self._kill_at or self.poll() is not None:
            return False
        self.kill()
        return True

    def kill(self) -> None:
        """End the process and its children now (the whole process group)."""
        if self.poll() is not None:
            return
        if os.name == "nt":
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(self.process.pid)], capture_output=True, check=False)
        else:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.poll()
