"""From discovered series to training data: preprocessing, the on-disk cache, and the pair sampler.

``PairDataset`` is imported on first use, so that preprocessing worker processes do not import torch.
"""
from __future__ import annotations

from typing import Any

from .cache import (
    CacheEntry,
    CacheWriteError,
    NoUsableDataError,
    PrepareSummary,
    cache_preprocessing,
    from_storage,
    is_cache,
    open_cache,
    prepare_cache,
)
from .preprocess import Normalisation, PrepareConfig, Preprocessed, canonical_grid, preprocess_image

__all__ = ["CacheEntry", "CacheWriteError", "NoUsableDataError", "Normalisation", "PairDataset", "PrepareConfig",
           "PrepareSummary", "Preprocessed", "cache_preprocessing", "canonical_grid", "from_storage", "is_cache",
           "open_cache", "prepare_cache", "preprocess_image"]


def __getattr__(name: str) -> Any:
    if name == "PairDataset":
        from .pairs import PairDataset

        return PairDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
