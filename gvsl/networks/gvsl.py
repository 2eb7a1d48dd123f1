"""GVSL: shared backbone, Z-matching head (affine + deformable) and restoration head."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from gvsl.networks.affine import bound_affine_parameters, compose_affine_matrix
from gvsl.networks.backbone import DEFAULT_CHANNELS, SIZE_MULTIPLE, UNetBackbone
from gvsl.networks.blocks import DoubleConv, group_count
from gvsl.networks.conventions import Conventions, check_conventions
from gvsl.networks.correlation import CorrelationAffineHead, FieldStage, MatchingStage
from gvsl.networks.warp import at_least_float32, warp_affine, warp_moving

ARCHITECTURES: tuple[str, ...] = ("paper", "correlation")


def check_architecture(architecture: str, conventions: str) -> None:
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
    if architecture != "paper" and conventions != "corrected":
        raise ValueError(f"the {architecture} architecture needs the corrected conventions")


def check_volume(x: torch.Tensor, name: str) -> None:
    """Raise ValueError unless ``x`` is a finite float (N, 1, D, H, W) tensor, each side >= 16."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 5:
        raise ValueError(f"{name} must be 5-D (N, C, D, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if min(x.shape[2:]) < SIZE_MULTIPLE:
        raise ValueError(f"{name} is {tuple(x.shape[2:])} voxels; every axis needs at least {SIZE_MULTIPLE}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or Inf values")


class GVSL(nn.Module):
    """The GVSL pre-training network (He et al., CVPR 2023).

    ``forward(a, b)`` with a = appearance-corrupted view A', b = B, both
    (N, 1, D, H, W), returns:

    - ``restored_a`` (N, 1, D, H, W): A restored from A' 's local features;
    - ``warped_b`` (N, 1, D, H, W): B warped onto A by the affine then the field;
    - ``affine_ba`` (N, 3, 4): the affine head's matrix [R | t];
    - ``flow_ba`` (N, 3, D, H, W): displacement in voxels, channels (d, h, w).

    What the affine and the field mean in voxels depends on ``conventions``
    (see ``gvsl.networks.conventions``). ``architecture`` "paper" is the
    published network: its layer names follow the published checkpoint so its
    state dict loads with ``strict=True``; the heads' widths follow
    ``channels``: affine head 2*c[4] -> c[4]/2, deformable head
    2*c[8] -> c[8]/2, restoration head c[8] -> c[8]/2 -> 1. ``"correlation"``
    replaces the affine head by ``CorrelationAffineHead`` (block matching of
    the local features, corrected conventions only), which can also run a coarse-to-fine schedule and give a field
    from its matches (``forward``'s ``affine_stages`` and ``field_stage``). The last layers of the
    affine and deformable heads start at zero, so a new paper network returns
    the identity; any correlation network returns the identity for a pair of
    identical images.
    """

    def __init__(self, channels: Sequence[int] = DEFAULT_CHANNELS, conventions: Conventions = "corrected",
                 in_channels: int = 1, architecture: str = "paper"):
        super().__init__()
        check_conventions(conventions)
        check_architecture(architecture, conventions)
        self.conventions = conventions
        self.architecture = architecture
        self.unet = UNetBackbone(in_channels, channels)
        c = self.unet.channels
        g, l_ = c[4] // 2, c[8] // 2
        # Attribute order = the published state dict's key order.
        if architecture == "paper":
            self.f_conv = DoubleConv(2 * c[4], g)  # affine head, on global features of B and A
        self.sp_conv = DoubleConv(2 * c[8], l_)  # deformable head, on local features of warped B and A
        self.res_conv = nn.Sequential(  # restoration head, on local features of A'
            nn.Conv3d(c[8], l_, 3, padding=1),
            nn.GroupNorm(group_count(l_, per_group=4), l_),
            nn.LeakyReLU(0.2),
            nn.Conv3d(l_, 1, 1),
        )
        self.out_flow = nn.Conv3d(l_, 3, 3, padding=1)
        if architecture == "paper":
            self.fc_rot = nn.Linear(g, 3)
            self.fc_scl = nn.Linear(g, 3)
            self.fc_trans = nn.Linear(g, 3)
            self.fc_shear = nn.Linear(g, 6)
            last_layers = [self.out_flow, self.fc_rot, self.fc_scl, self.fc_trans, self.fc_shear]
        else:
            self.correlation_head = CorrelationAffineHead(c[8])
            last_layers = [self.out_flow]
        for layer in last_layers:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @property
    def channels(self) -> tuple[int, ...]:
        return self.unet.channels

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone (global, local) features; see ``UNetBackbone.forward``."""
        return self.unet(x)

    def affine(self, global_b: torch.Tensor, global_a: torch.Tensor) -> torch.Tensor:
        """(N, 3, 4) affine matrix registering B to A from their global features."""
        x = self.f_conv(torch.cat([global_b, global_a], dim=1)).mean(dim=(2, 3, 4))
        # The matrix is built in at least float32, also under autocast.
        rot, scale, trans, shear = (at_least_float32(fc(x)) for fc in (self.fc_rot, self.fc_scl, self.fc_trans,
                                                                         self.fc_shear))
        rot, scale, shear = bound_affine_parameters(rot, scale, shear)
        return compose_affine_matrix(rot, scale, trans, shear)

    def deformation(self, warped_local_b: torch.Tensor, local_a: torch.Tensor) -> torch.Tensor:
        """(N, 3, D, H, W) displacement field (voxels) from local features."""
        return self.out_flow(self.sp_conv(torch.cat([warped_local_b, local_a], dim=1)))

    def restore(self, local_a: torch.Tensor) -> torch.Tensor:
        return self.res_conv(local_a)

    def forward(self, a: torch.Tensor, b: torch.Tensor, affine_stages: Optional[Sequence[MatchingStage]] = None,
                field_stage: Optional[FieldStage] = None, moving_support: Optional[torch.Tensor] = None):
        """See the class doc; the other arguments as in ``register``."""
        local_a, warped_b, theta, flow = self.register(a, b, affine_stages, field_stage, moving_support)
        return self.restore(local_a), warped_b, theta, flow

    def register(self, a: torch.Tensor, b: torch.Tensor, affine_stages: Optional[Sequence[MatchingStage]] = None,
                 field_stage: Optional[FieldStage] = None, moving_support: Optional[torch.Tensor] = None):
        """``forward`` without the restoration head, whose output matching does not use: (``local_a``, the
        (N, c[8], D, H, W) local features of a; ``warped_b``; ``affine_ba``; ``flow_ba``). Correlation architecture
        only: ``affine_stages``, the correlation head's coarse-to-fine schedule (``CorrelationAffineHead.forward``;
        None: the stage it was trained with); ``field_stage``, the field from the correlation head's matches
        (``CorrelationAffineHead.displacement``, with ``moving_support``, where b holds scan data) instead of the
        deformable head's (None)."""
        check_volume(a, "a")
        check_volume(b, "b")
        if a.shape != b.shape:
            raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
        # One backbone call on [a; b]: GroupNorm is per sample, so this equals two calls and is faster.
        global_f, local_f = self.features(torch.cat([a, b], dim=0))
        global_a, global_b = global_f.chunk(2)
        local_a, local_b = local_f.chunk(2)
        if self.architecture == "paper":
            theta = self.affine(global_b, global_a)
        else:
            theta = self.correlation_head(local_a, local_b, affine_stages)
        if field_stage is not None and self.architecture != "paper":
            flow = self.correlation_head.displacement(local_a, local_b, theta, field_stage, moving_support)
        else:
            flow = self.deformation(warp_affine(local_b, theta, self.conventions), local_a)
        warped_b = warp_moving(b, theta, flow, self.conventions)
        return local_a, warped_b, theta, flow
