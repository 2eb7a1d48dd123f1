"""Random draws for the augmentations, all from one ``torch.Generator`` so that a seed reproduces a batch."""
from __future__ import annotations

from typing import Sequence

import torch


def generator_device(generator: torch.Generator | None) -> torch.device:
    """Device that ``generator`` draws on (the CPU for the default generator)."""
    return generator.device if generator is not None else torch.device("cpu")


def uniform(shape: Sequence[int], low: float | torch.Tensor, high: float | torch.Tensor,
            generator: torch.Generator | None, device: torch.device | str | None = None) -> torch.Tensor:
    """float32 samples of U[low, high) drawn on the generator's device, then moved to ``device``."""
    u = torch.rand(tuple(shape), generator=generator, device=generator_device(generator))
    if device is not None:
        u = u.to(device)
    return low + (high - low) * u


def coin(batch: int, prob: float, generator: torch.Generator | None) -> list[bool]:
    """One Bernoulli(``prob``) outcome per sample."""
    return (uniform((batch,), 0.0, 1.0, generator).cpu() < prob).tolist()
