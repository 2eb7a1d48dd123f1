"""One GVSL pre-training step: augmentation, forward (under autocast), the paper's loss, optimiser update.

Shared by the training loop and ``benchmarks/step.py`` so that both measure the same work.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from gvsl.losses import local_ncc_loss, restoration_loss, smoothness_loss
from gvsl.networks.blocks import DoubleConv
from gvsl.networks.warp import warp_affine
from gvsl.pretrain.synthetic import affine_supervision_loss, make_synthetic_pairs
from gvsl.train.device import Precision, use_fast_kernels
from gvsl.train.finite_update import FiniteUpdate

# (a, b, generator) -> (A, A', B), each (N, 1, D, H, W) on the device: see gvsl.augment.GVSLAugmentation.
Augmentation = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class LossWeights:
    """Weights of the terms of the GVSL loss: the paper's three (it uses 1, 1, 1); ``ncc_affine``, the NCC of B
    warped by the affine alone, and ``synthetic_affine``, the affine's error on synthetic pairs
    (``gvsl.pretrain.synthetic``), are not in the paper (0 leaves them out)."""

    ncc: float = 1.0
    mse: float = 1.0
    smooth: float = 1.0
    ncc_affine: float = 0.0
    synthetic_affine: float = 0.0


def gvsl_losses(restored_a: torch.Tensor, warped_b: torch.Tensor, flow_ba: torch.Tensor, clean_a: torch.Tensor,
                weights: LossWeights, affine_warped_b: Optional[torch.Tensor] = None,
                synthetic_affine: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
    """The loss and its terms (scalars): ``loss`` = w_ncc NCC(warped B, A) + w_mse MSE(restored A, A) +
    w_smooth smoothness(field) [+ w_ncc_affine NCC(affine-warped B, A) when ``affine_warped_b`` is given]
    [+ w_synthetic_affine ``synthetic_affine`` when given]. NCC is computed in float32 whatever the autocast dtype."""
    terms = {
        "ncc": local_ncc_loss(warped_b, clean_a),
        "mse": restoration_loss(restored_a, clean_a),
        "smooth": smoothness_loss(flow_ba.float()),
    }
    total = weights.ncc * terms["ncc"] + weights.mse * terms["mse"] + weights.smooth * terms["smooth"]
    if affine_warped_b is not None:
        terms["ncc_affine"] = local_ncc_loss(affine_warped_b, clean_a)
        total = total + weights.ncc_affine * terms["ncc_affine"]
    if synthetic_affine is not None:
        terms["synthetic_affine"] = synthetic_affine
        total = total + weights.synthetic_affine * synthetic_affine
    return {"loss": total, **terms}


def enable_activation_checkpointing(model: nn.Module) -> int:
    """Recompute every DoubleConv's activations during backward instead of keeping them; returns how many.

    Trades about one extra forward pass for the memory of the stored
    activations. The state dict is unchanged.
    """
    blocks = [m for m in model.modules() if isinstance(m, DoubleConv)]
    for block in blocks:
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)
    return len(blocks)


class NonFiniteLossError(ValueError):
    """The loss of a step is NaN or infinite (the weights were left as they were)."""


@dataclass
class StepOutput:
    """Detached scalar losses; ``views`` = (A, B, warped B, restored A) of the first pair, (D, H, W), if asked."""

    losses: dict[str, torch.Tensor]
    views: Optional[tuple[torch.Tensor, ...]] = None


class TrainStep:
    """Runs one optimisation step on a batch of pairs.

    ``model`` is a GVSL network (or its DistributedDataParallel wrapper) on
    ``device``; ``scaler`` is a ``torch.amp.GradScaler`` (disabled unless
    float16). ``channels_last`` feeds the network channels-last-3d inputs
    (the model should be converted the same way). ``synthetic_fraction``: the
    share of samples whose B is replaced by a synthetic pair
    (``gvsl.pretrain.synthetic``; weighted by ``weights.synthetic_affine``).
    On CUDA it turns on cuDNN autotuning for the process (``gvsl.train.device.use_fast_kernels``).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 augmentation: Augmentation, precision: Precision, device: torch.device,
                 weights: LossWeights = LossWeights(), channels_last: bool = False, synthetic_fraction: float = 0.0):
        self.model = model
        self.optimizer = optimizer
        self.scaler = scaler
        self.augmentation = augmentation
        self.precision = precision
        self.device = device
        self.weights = weights
        self.memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
        self.synthetic_fraction = synthetic_fraction
        use_fast_kernels(device)  # cuDNN autotuning on CUDA: crops have one size
        self.conventions = getattr(model, "module", model).conventions
        self.update = FiniteUpdate(model, optimizer, scaler)

    def __call__(self, a: torch.Tensor, b: torch.Tensor, generator: torch.Generator,
                 keep_views: bool = False) -> StepOutput:
        """One update from ``a``, ``b``: (N, 1, D, H, W) float32 in [0, 1] (any device).

        ``generator`` (on ``device``) drives the augmentation; ``keep_views`` returns the first pair's views.
        """
        a = a.to(self.device, non_blocking=True)
        b = b.to(self.device, non_blocking=True)
        clean_a, corrupted_a, b = self.augmentation(a, b, generator)
        synthetic = None
        if self.synthetic_fraction:
            synthetic = make_synthetic_pairs(clean_a, b, self.synthetic_fraction, generator)
            b = synthetic.b
        with self.precision.autocast(self.device):
            restored_a, warped_b, theta, flow_ba = self.model(corrupted_a.contiguous(memory_format=self.memory_format),
                                                              b.contiguous(memory_format=self.memory_format))
        affine_warped_b = warp_affine(b, theta, self.conventions) if self.weights.ncc_affine else None
        synthetic_affine = None if synthetic is None else affine_supervision_loss(theta, synthetic, self.conventions)
        losses = gvsl_losses(restored_a, warped_b, flow_ba, clean_a, self.weights, affine_warped_b, synthetic_affine)
        # The crops are finite (cached as uint16), so a NaN/Inf loss means the weights diverged: stop before they
        # are updated and saved. Under float16 the loss scaler skips such steps itself and lowers its scale.
        if not self.scaler.is_enabled() and not bool(torch.isfinite(losses["loss"])):
            raise NonFiniteLossError(
                "the loss is not finite (" + ", ".join(f"{k} {float(v.detach()):g}" for k, v in losses.items()) + "): "
                "training diverged; the weights were not updated and the last checkpoint is intact: resume from it "
                "with a lower --lr")
        self.update(losses["loss"])
        views = None
        if keep_views:
            views = tuple(v[0, 0].detach().float() for v in (clean_a, b, warped_b, restored_a))
        return StepOutput({k: v.detach() for k, v in losses.items()}, views)
