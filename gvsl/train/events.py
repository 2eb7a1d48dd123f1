"""The run's event file: ``RUN_DIR/events.jsonl``, one JSON object per line, flushed at each write.

Every record has ``"event"`` (``start``, ``iteration``, ``checkpoint``,
``stop``, ``error``, ``end``; fine-tuning with an unlabelled collection adds ``pseudo_labels`` and
``collection_notes``; a comparison of fine-tuning runs adds ``comparison_start``, ``arm_start``,
``arm_train_end``, ``arm_error`` and ``arm_end``) and ``"time"`` (Unix seconds). The Slicer module
tails this file; see ``gvsl.pretrain.engine``, ``gvsl.finetune.engine`` and ``gvsl.finetune.compare`` for each
event's fields.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

EVENTS_NAME = "events.jsonl"
EVENTS = ("start", "iteration", "checkpoint", "stop", "error", "end", "pseudo_labels", "collection_notes",
          "comparison_start", "arm_start", "arm_train_end", "arm_error", "arm_end")
Listener = Callable[[dict], None]


class EventLog:
    """Appends events to ``path``; ``path=None`` writes nothing (ranks other than 0) but still calls ``listener``."""

    def __init__(self, path: Optional[os.PathLike], listener: Optional[Listener] = None):
        self.path = Path(path) if path is not None else None
        self.listener = listener
        self._file = open(self.path, "a", encoding="utf-8") if self.path is not None else None

    def write(self, event: str, **fields: Any) -> dict:
        """Append one record and return it."""
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}")
        record = {"event": event, "time": round(time.time(), 3), **fields}
        if self._file is not None:
            self._file.write(json.dumps(record, default=str) + "\n")
            self._file.flush()
        if self.listener is not None:
            self.listener(record)
        return record

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_events(path: os.PathLike) -> list[dict]:
    """All complete records of an event file (a partly written last line is skipped)."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
