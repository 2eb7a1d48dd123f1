"""Fine-tuning a pre-trained GVSL backbone into a segmentation model (``gvsl finetune``), and comparing it with
training from scratch (``gvsl finetune --compare``).

The names below are imported on first use (PEP 562), so reading the configuration (``gvsl finetune --help``) imports
neither torch nor the data readers.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"MODES": "config", "FinetuneConfig": "config", "Case": "data", "find_cases": "data",
            "FinetuneResult": "engine", "run_finetune": "engine", "Arm": "compare", "run_comparison": "compare"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
