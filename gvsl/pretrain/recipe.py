"""The pre-training recipe that learned correspondence on a 2-core CPU in minutes (benchmarks/RESULTS.md,
"Correspondence accuracy"): the correlation affine head, the NCC of the affine alone and synthetic pairs, lr 1e-3.

``CORRESPONDENCE_RECIPE`` holds what does not depend on the scale (``TrainConfig`` field names); ``QUICK_RECIPE``
adds the demo's scale: heads at ``QUICK_SPACING_MM``, one 48³ crop covering most of a head, batch 1.
"""
from __future__ import annotations

from typing import Any, Mapping

CORRESPONDENCE_RECIPE: dict[str, Any] = dict(lr=1e-3, architecture="correlation", weight_ncc_affine=1.0,
                                             synthetic_fraction=0.5)
QUICK_SPACING_MM = 4.0
QUICK_RECIPE: dict[str, Any] = dict(CORRESPONDENCE_RECIPE, spacing=(QUICK_SPACING_MM,) * 3, patch=(48, 48, 48),
                                    batch=1)


def recipe_flags(recipe: Mapping[str, Any]) -> list[str]:
    """``gvsl pretrain``'s flags for scalar recipe settings: ``{"weight_ncc_affine": 1.0}`` -> ``["--weight-ncc-affine",
    "1.0"]``."""
    return [item for name, value in recipe.items() for item in (f"--{name.replace('_', '-')}", str(value))]
