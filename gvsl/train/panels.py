"""Image panels: the three middle slices of several volumes side by side, for TensorBoard and PNG files."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

GAP = 2  # pixels between tiles


def middle_slices(volume: np.ndarray) -> list[np.ndarray]:
    """Axial, coronal and sagittal middle slices of a (D, H, W) array, superior up in the last two."""
    d, h, w = volume.shape
    return [volume[d // 2], volume[:, h // 2, :][::-1], volume[:, :, w // 2][::-1]]


def slice_panel(volumes: Sequence[torch.Tensor | np.ndarray], low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """(rows, cols) float32 image in [0, 1]: one column per volume, rows axial / coronal / sagittal.

    Each volume is (D, H, W) or has leading singleton axes, e.g. (1, 1, D, H, W);
    values are clipped to [low, high] and scaled to [0, 1]. Tiles are
    zero-padded to a common size and separated by ``GAP`` pixels.
    """
    arrays = [np.asarray(v.detach().float().cpu() if isinstance(v, torch.Tensor) else v, dtype=np.float32)
              for v in volumes]
    arrays = [a.reshape(a.shape[-3:]) for a in arrays]
    tiles = [middle_slices(a) for a in arrays]
    tile_h = max(t.shape[0] for column in tiles for t in column)
    tile_w = max(t.shape[1] for column in tiles for t in column)
    panel = np.zeros((3 * tile_h + 2 * GAP, len(arrays) * tile_w + (len(arrays) - 1) * GAP), np.float32)
    for c, column in enumerate(tiles):
        for r, tile in enumerate(column):
            y, x = r * (tile_h + GAP), c * (tile_w + GAP)
            panel[y:y + tile.shape[0], x:x + tile.shape[1]] = tile
    return np.clip((panel - low) / max(high - low, 1e-12), 0.0, 1.0)


def write_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Save a 2-D float image in [0, 1] as an 8-bit grey PNG (Pillow, a TensorBoard dependency)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)).save(path)  # uint8 2-D: grey
    return path


def labelled_panel(volumes: Sequence[np.ndarray], titles: Sequence[str], high: float, zoom: int = 3) -> np.ndarray:
    """``slice_panel`` of (D, H, W) arrays in [0, ``high``], each pixel ``zoom`` times larger, with a title over each
    column (white on black): a 2-D float image in [0, 1]."""
    from PIL import Image, ImageDraw

    panel = slice_panel(volumes, 0.0, high)
    panel = np.kron(panel, np.ones((zoom, zoom), np.float32))
    title_h, width = 16, panel.shape[1]
    image = Image.new("L", (width, panel.shape[0] + title_h), 0)
    image.paste(Image.fromarray(np.round(panel * 255).astype(np.uint8)), (0, title_h))
    draw = ImageDraw.Draw(image)
    column = (width + GAP * zoom) / len(volumes)
    for n, title in enumerate(titles):
        draw.text((n * column + 4, 2), title, fill=255)
    return np.asarray(image, np.float32) / 255
