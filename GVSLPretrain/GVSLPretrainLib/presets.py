"""Pre-training presets: "full" (``gvsl pretrain``'s defaults, the paper's scale: days on a GPU) and "quick look"
(the recipe that learns correspondences on sample-sized data in minutes, even on a CPU: ``gvsl demo``'s,
``gvsl.pretrain.recipe.QUICK_RECIPE``). The module repeats the numbers (it never imports the backend, which may not
be installed yet); a test checks them against ``gvsl.train.config.TrainConfig`` and the recipe.
"""
from __future__ import annotations

from dataclasses import dataclass

from GVSLSharedLib.runs import AUTO_BATCH

FULL, QUICK_LOOK = "full", "quick look"


@dataclass(frozen=True)
class Preset:
    """The module's run settings of a preset and the ``gvsl pretrain`` flags it adds."""

    iterations: int
    patch: int
    batch: int
    lr: float
    flags: tuple[str, ...] = ()


PRESETS = {
    FULL: Preset(iterations=200_000, patch=128, batch=AUTO_BATCH, lr=1e-4),
    QUICK_LOOK: Preset(iterations=300, patch=48, batch=1, lr=1e-3,
                       flags=("--architecture", "correlation", "--weight-ncc-affine", "1.0",
                              "--synthetic-fraction", "0.5", "--spacing", "4.0")),
}
