"""Appearance corruptions (Models Genesis style) for the restoration task, batched and vectorised in torch."""
from __future__ import annotations

from typing import Sequence

import torch

from gvsl.augment.config import AugmentationConfig
from gvsl.augment.draw import coin, uniform

BEZIER_SAMPLES = 1024  # curve points
LOOKUP_SIZE = 1024  # intensities tabulated


def box_edges(shape_dhw: Sequence[int], fraction: float) -> tuple[int, int, int]:
    """Box edge per axis, ``fraction`` of the size rounded, at least one voxel."""
    return tuple(max(1, round(s * fraction)) for s in shape_dhw)


def local_pixel_shuffle(x: torch.Tensor, generator: torch.Generator | None, box_fraction: float = 1 / 20,
                        coverage: float = 0.7, apply: Sequence[bool] | None = None) -> torch.Tensor:
    """Permute the voxels inside many small boxes.

    The boxes are the cells of a grid of edge ``box_fraction * size`` per axis,
    shifted by a random offset; each cell is shuffled with probability
    ``coverage``. Non-overlapping cells make the gather/permute/scatter one
    vectorised step (Models Genesis draws overlapping boxes one at a time).
    All channels get the same permutation.

    Args:
        x: (N, C, D, H, W) volumes.
        apply: which samples to corrupt (default all).
    Returns:
        (N, C, D, H, W) new tensor; each voxel's value comes from its own box.
    """
    out = x.clone()
    n_batch, channels = x.shape[:2]
    edges = box_edges(x.shape[2:], box_fraction)
    for n in range(n_batch):
        if apply is not None and not apply[n]:
            continue
        offsets = (uniform((3,), 0.0, 1.0, generator).cpu() * torch.tensor(edges)).long().tolist()
        counts = [(s - o) // e for s, o, e in zip(x.shape[2:], offsets, edges)]
        region = tuple(slice(o, o + c * e) for o, c, e in zip(offsets, counts, edges))
        # (C, cd, ed, ch, eh, cw, ew) -> (C, cells, voxels per cell)
        cells = out[(n, slice(None), *region)].reshape(channels, counts[0], edges[0], counts[1], edges[1],
                                                       counts[2], edges[2])
        cells = cells.permute(0, 1, 3, 5, 2, 4, 6).reshape(channels, -1, edges[0] * edges[1] * edges[2])
        chosen = torch.nonzero(uniform((cells.shape[1],), 0.0, 1.0, generator).cpu() < coverage).squeeze(1)
        keys = uniform((chosen.numel(), cells.shape[2]), 0.0, 1.0, generator, x.device)
        chosen = chosen.to(x.device)
        order = keys.argsort(dim=1).unsqueeze(0).expand(channels, -1, -1)
        cells[:, chosen] = cells[:, chosen].gather(2, order)
        out[(n, slice(None), *region)] = cells.reshape(channels, counts[0], counts[1], counts[2], *edges).permute(
            0, 1, 4, 2, 5, 3, 6).reshape(channels, *(c * e for c, e in zip(counts, edges)))
    return out


def bezier_curves(control: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Points of cubic Bezier curves from (0, 0) to (1, 1).

    Args:
        control: (N, 2, 2) the two inner control points (x, y), in [0, 1]^2.
    Returns:
        x and y, each (N, BEZIER_SAMPLES), non-decreasing in the curve parameter:
        with control points in the unit square both coordinates are monotone,
        so each curve is the graph of a non-decreasing map [0, 1] -> [0, 1].
    """
    t = torch.linspace(0, 1, BEZIER_SAMPLES, dtype=control.dtype, device=control.device)
    basis = torch.stack([3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3])  # (3, BEZIER_SAMPLES)
    ends = torch.ones_like(control[:, :1])
    points = torch.cat([control, ends], dim=1)  # (N, 3, 2): P1, P2, P3 (P0 = 0 adds nothing)
    curve = torch.einsum("nkc,ks->ncs", points, basis)
    # Clamped cumulative maxima only absorb float rounding; the curves are monotone already.
    x, y = curve.clamp(0, 1).cummax(dim=2).values.unbind(1)
    return x.contiguous(), y.contiguous()


def bezier_lookup_table(control: torch.Tensor, size: int = LOOKUP_SIZE) -> torch.Tensor:
    """The maps of Bezier curves at ``size`` evenly spaced intensities in [0, 1].

    Args:
        control: (N, 2, 2) inner control points (x, y) in [0, 1]^2.
    Returns:
        (N, size) non-decreasing tables from exactly 0 to exactly 1: the curve
        point with abscissa ``i / (size - 1)``, linearly interpolated between
        the ``BEZIER_SAMPLES`` curve points around it.
    """
    cx, cy = bezier_curves(control)
    v = torch.linspace(0, 1, size, dtype=cx.dtype, device=cx.device).expand(cx.shape[0], -1).contiguous()
    hi = torch.searchsorted(cx, v, right=True).clamp(1, BEZIER_SAMPLES - 1)
    x0, x1 = cx.gather(1, hi - 1), cx.gather(1, hi)
    span = x1 - x0
    # A vertical piece (zero span) can only be reached at v = 1, where the curve's end, 1, is the answer.
    w = torch.where(span > 0, (v - x0) / span.clamp(min=torch.finfo(span.dtype).tiny), torch.ones_like(v))
    return torch.lerp(cy.gather(1, hi - 1), cy.gather(1, hi), w.clamp(0, 1))


def bezier_intensity_map(x: torch.Tensor, generator: torch.Generator | None,
                         apply: Sequence[bool] | None = None) -> torch.Tensor:
    """Map intensities through a random monotone cubic Bezier curve per sample.

    The curve (end points (0, 0) and (1, 1), two control points uniform in the
    unit square) is tabulated by :func:`bezier_lookup_table` and the table is
    linearly interpolated: one gather per voxel instead of a search.

    Args:
        x: (N, C, D, H, W) volumes with values in [0, 1] (clamped to it).
        apply: which samples to map (default all).
    Returns:
        (N, C, D, H, W) values in [0, 1]; 0 maps to 0 and 1 to 1.
    """
    n_batch = x.shape[0]
    table = bezier_lookup_table(uniform((n_batch, 2, 2), 0.0, 1.0, generator, x.device))
    pos = x.reshape(n_batch, -1).to(table.dtype).clamp(0, 1).mul_(table.shape[1] - 1)
    lo = pos.long().clamp_(max=table.shape[1] - 2)
    mapped = torch.lerp(table.gather(1, lo), table.gather(1, lo + 1), pos.sub_(lo)).view_as(x).to(x.dtype)
    if apply is None or all(apply):
        return mapped
    keep = torch.tensor(apply, device=x.device).view(-1, 1, 1, 1, 1)
    return torch.where(keep, mapped, x)


def inpaint(x: torch.Tensor, generator: torch.Generator | None, max_boxes: int = 30, continue_prob: float = 0.95,
            box_fraction: tuple[float, float] = (1 / 10, 1 / 5), apply: Sequence[bool] | None = None) -> torch.Tensor:
    """Fill random boxes with U[0, 1] noise.

    The number of boxes is geometric: one more with probability
    ``continue_prob``, at most ``max_boxes``. Edges are integers uniform in
    ``box_fraction * size`` per axis; boxes lie inside the volume and may overlap.

    Args:
        x: (N, C, D, H, W) volumes.
        apply: which samples to corrupt (default all).
    Returns:
        (N, C, D, H, W) new tensor, equal to ``x`` outside the boxes.
    """
    out = x.clone()
    shape = x.shape[2:]
    low, high = box_edges(shape, box_fraction[0]), box_edges(shape, box_fraction[1])
    for n in range(x.shape[0]):
        if apply is not None and not apply[n]:
            continue
        more = uniform((max_boxes,), 0.0, 1.0, generator).cpu() < continue_prob
        count = int(more.long().cumprod(0).sum())
        fractions = uniform((count, 2, 3), 0.0, 1.0, generator).cpu()
        for box in fractions:
            edges = [lo + int(f * (hi - lo + 1)) for lo, hi, f in zip(low, high, box[0].tolist())]
            starts = [int(f * (s - e + 1)) for s, e, f in zip(shape, edges, box[1].tolist())]
            noise = uniform((x.shape[1], *edges), 0.0, 1.0, generator, x.device).to(x.dtype)
            out[(n, slice(None), *(slice(s, s + e) for s, e in zip(starts, edges)))] = noise
    return out


def corrupt_appearance(x: torch.Tensor, generator: torch.Generator | None,
                       config: AugmentationConfig | None = None) -> torch.Tensor:
    """A' = corrupted copy of A: shuffling, Bezier mapping, in-painting, each with its per-sample probability.

    Args:
        x: (N, C, D, H, W) volumes with values in [0, 1].
        generator: source of all random numbers (any device); ``None`` uses torch's default generator.
    Returns:
        (N, C, D, H, W) new tensor on ``x``'s device; ``x`` is not modified.
    """
    config = config or AugmentationConfig()
    n_batch = x.shape[0]
    out = local_pixel_shuffle(x, generator, config.shuffle_box_fraction, config.shuffle_coverage,
                              coin(n_batch, config.shuffle_prob, generator))
    out = bezier_intensity_map(out, generator, coin(n_batch, config.intensity_prob, generator))
    return inpaint(out, generator, config.inpaint_max_boxes, config.inpaint_continue_prob,
                   config.inpaint_box_fraction, coin(n_batch, config.inpaint_prob, generator))
