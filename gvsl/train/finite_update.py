"""The optimiser update, skipped when a gradient is NaN or infinite (pre-training and fine-tuning share it)."""
from __future__ import annotations

import torch
from torch import nn


class NonFiniteGradientError(ValueError):
    """Several updates in a row had NaN or infinite gradients (none of them changed the weights)."""


class FiniteUpdate:
    """``optimizer.step()`` through ``scaler``, unless a gradient of ``model`` is not finite.

    Why: a finite loss can still give a NaN weight gradient, and one such update makes every weight NaN; the next
    checkpoint would then keep them. It happens without any divergence: oneDNN's bfloat16 channels-last
    convolution backward on the CPU gave a NaN weight gradient in 1 of 12 and 4 of 16 processes on the first step
    (torch 2.13.0+cpu, AVX512-BF16; benchmarks/RESULTS.md). Such an update is skipped, as float16's loss scaler
    skips its own overflows; ``limit`` skipped updates in a row raise ``NonFiniteGradientError`` (that is
    divergence, not a kernel's accident).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 limit: int = 3):
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = optimizer
        self.scaler = scaler
        self.limit = limit
        self.skipped_in_a_row = 0

    def __call__(self, loss: torch.Tensor) -> bool:
        """Back-propagate ``loss`` and update the weights; returns whether they were updated."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if not self.scaler.is_enabled() and not self.gradients_are_finite():
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_in_a_row += 1
            if self.skipped_in_a_row >= self.limit:
                raise NonFiniteGradientError(
                    f"{self.skipped_in_a_row} updates in a row had NaN or infinite gradients (loss "
                    f"{float(loss.detach()):g}); the weights were not changed by them and the last checkpoint is "
                    "intact: resume from it with a lower --lr or --precision fp32")
            return False
        self.skipped_in_a_row = 0
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return True

    def gradients_are_finite(self) -> bool:
        norms = [torch.linalg.vector_norm(p.grad.detach().float()) for p in self.parameters if p.grad is not None]
        return bool(torch.isfinite(torch.stack(norms)).all()) if norms else True
