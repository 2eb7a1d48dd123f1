"""The affine head's parameterisation: bounded parameters -> a 3x4 matrix, batched and differentiable."""
from __future__ import annotations

import math

import torch

ROTATION_MAX_RAD = math.pi / 9
SCALE_MAX_CHANGE = 0.25
SHEAR_MAX_RAD = math.pi / 18


def bound_affine_parameters(rot: torch.Tensor, scale: torch.Tensor, shear: torch.Tensor):
    """Map raw linear-layer outputs to rotation (rad), scale factor and shear angle (rad)."""
    return (
        rot.clamp(-1, 1) * ROTATION_MAX_RAD,
        1 + scale.clamp(-1, 1) * SCALE_MAX_CHANGE,
        shear.clamp(-1, 1) * SHEAR_MAX_RAD,
    )


def compose_affine_matrix(rot: torch.Tensor, scale: torch.Tensor, trans: torch.Tensor,
                          shear: torch.Tensor) -> torch.Tensor:
    """[Shear @ Scale @ Rz @ Ry @ Rx | t] for a batch.

    Args:
        rot: (N, 3) angles (rad) about the first, second and third axis.
        scale: (N, 3) scale factors.
        trans: (N, 3) translation.
        shear: (N, 6) shear angles (rad), entries (01, 02, 10, 12, 20, 21) of the
            shear matrix, whose off-diagonal entries are their tangents.
    Returns:
        (N, 3, 4) matrices; gradients flow to every input.
    """
    one = torch.ones_like(rot[:, 0])
    zero = torch.zeros_like(one)
    c, s = rot.cos(), rot.sin()

    def mat(*rows):
        return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)

    rx = mat((one, zero, zero), (zero, c[:, 0], -s[:, 0]), (zero, s[:, 0], c[:, 0]))
    ry = mat((c[:, 1], zero, s[:, 1]), (zero, one, zero), (-s[:, 1], zero, c[:, 1]))
    rz = mat((c[:, 2], -s[:, 2], zero), (s[:, 2], c[:, 2], zero), (zero, zero, one))
    t = shear.tan()
    sh = mat((one, t[:, 0], t[:, 1]), (t[:, 2], one, t[:, 3]), (t[:, 4], t[:, 5], one))
    linear = sh @ torch.diag_embed(scale) @ rz @ ry @ rx
    return torch.cat([linear, trans.unsqueeze(-1)], dim=-1)
