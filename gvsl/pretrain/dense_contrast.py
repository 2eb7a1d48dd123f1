"""Dense correspondence contrast: on synthetic pairs, a voxel's local feature must pick out its own match.

On a synthetic pair (``gvsl.pretrain.synthetic``: B is A resampled under a known affine, A' an appearance-corrupted
A) voxel p of A corresponds to voxel ``T⁻¹ p`` of B. For K foreground voxels of A, the L2-normalised local
features of A' at p and of B at their matches are compared all against all; an InfoNCE loss (both directions)
asks each voxel's feature to be most similar to its own match's, so the features must tell positions in the
anatomy apart while ignoring the corruption. The paper's loss (matching + restoration) can be solved with features
that carry little more than intensity, and on real brains it did collapse to about one effective channel
(benchmarks/RESULTS.md, "Does pre-training pay?"); this term counters that. Not in the paper.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from gvsl.networks.conventions import apply_voxel_matrix
from gvsl.networks.warp import sample_voxels
from gvsl.pretrain.synthetic import SyntheticPairs

CONTRAST_VOXELS = 256
TEMPERATURE = 0.1
FOREGROUND = 0.05  # clean A intensity (in [0, 1]) above which a voxel may be drawn


def dense_contrast_loss(local_a: torch.Tensor, local_b: torch.Tensor, clean_a: torch.Tensor, pairs: SyntheticPairs,
                        generator: Optional[torch.Generator], voxels: int = CONTRAST_VOXELS,
                        temperature: float = TEMPERATURE) -> torch.Tensor:
    """Mean InfoNCE over the synthetic samples (0 without any).

    ``local_a``, ``local_b``: (N, C, D, H, W) local features of A' and B; ``clean_a``: (N, 1, D, H, W) A, whose
    foreground the voxels are drawn from; ``pairs.target``: (N, 4, 4) voxel matrix from A to B (d, h, w).
    """
    losses = []
    shape = local_a.shape[2:]
    upper = torch.tensor(shape, device=local_a.device, dtype=torch.float32).view(3, 1) - 1
    for n in torch.nonzero(pairs.mask).flatten().tolist():
        foreground = (clean_a[n, 0] > FOREGROUND).flatten().float()
        if foreground.sum() < 2:
            continue
        index = torch.multinomial(foreground, min(voxels, int(foreground.sum())), generator=generator)
        p = torch.stack(torch.unravel_index(index, shape)).float()  # (3, K)
        q = apply_voxel_matrix(pairs.target[n:n + 1].float(), p[None])[0]
        inside = ((q >= 0) & (q <= upper)).all(dim=0)
        if inside.sum() < 2:
            continue
        f_a = local_a[n].flatten(1)[:, index[inside]].float()
        f_b = sample_voxels(local_b[n:n + 1].float(), q[:, inside].view(1, 3, -1, 1, 1))[0].flatten(1)
        logits = F.normalize(f_a, dim=0).T @ F.normalize(f_b, dim=0) / temperature
        labels = torch.arange(logits.shape[0], device=logits.device)
        losses.append((F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2)
    if not losses:
        return local_a.sum() * 0
    return torch.stack(losses).mean()
