"""From discovered series to training data: preprocessing, the on-disk cache, and the pair sampler.

Every name is imported from its module on first use (see ``_MODULES``).
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

# Each name and its module, imported on first use: reading a cache and sampling pairs need neither SimpleITK nor
# pydicom (a GPU machine may lack them), preparing one needs both, and preprocessing workers need no torch.
_MODULES = {
    **dict.fromkeys(("CacheEntry", "CacheWriteError", "NoUsableDataError", "PrepareSummary", "cache_preprocessing",
                     "WorkerDiedError", "from_storage", "is_cache", "open_cache", "prepare_cache"), "cache"),
    **dict.fromkeys(("Normalisation", "PrepareConfig", "Preprocessed", "canonical_grid", "preprocess_image"),
                    "preprocess"),
    "PairDataset": "pairs",
}
__all__ = sorted(_MODULES)


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_MODULES[name]}", __name__), name)
