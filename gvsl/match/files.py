"""Matching two scan files with a GVSL checkpoint file: what ``gvsl match`` and Slicer's correspondence probe run."""
from __future__ import annotations

import os
from dataclasses import dataclass

import SimpleITK as sitk

from gvsl.checkpoints import CheckpointInfo, load_checkpoint, load_gvsl
from gvsl.io.geometry import grid_differences
from gvsl.io.reading import read_image
from gvsl.match.options import MatchOptions, match_config_for
from gvsl.match.result import MatchResult
from gvsl.match.volumes import match_volumes
from gvsl.train.device import select_device


@dataclass(frozen=True)
class FileMatch:
    """``result``: the match (its ``.transform`` maps fixed physical points to moving ones, LPS mm).
    ``checkpoint_info``: what the checkpoint is. ``labels``: the label map of the moving scan to carry onto the fixed
    grid (None without one). ``fixed_path``, ``moving_path``, ``checkpoint_path``: the inputs as named."""

    result: MatchResult
    checkpoint_info: CheckpointInfo
    labels: sitk.Image | None
    fixed_path: str
    moving_path: str
    checkpoint_path: str

    @property
    def record(self) -> dict[str, str]:
        """What was matched, as ``gvsl match`` records it beside the metrics (``gvsl.match.outputs.write_outputs``):
        the checkpoint's conventions and the input paths."""
        return {"conventions": self.checkpoint_info.conventions, "fixed": self.fixed_path, "moving": self.moving_path,
                "checkpoint": self.checkpoint_path}


def match_files(fixed: str | os.PathLike, moving: str | os.PathLike, checkpoint: str | os.PathLike,
                options: MatchOptions, labels: str | os.PathLike | None = None) -> FileMatch:
    """Read the fixed and moving scans (volume files or DICOM series folders), load the checkpoint and match.

    ``labels``: a label map on the moving scan's grid, read for ``MatchResult.propagate_labels``. Raises ValueError
    for inputs that cannot be used (unreadable files, a checkpoint that is not a GVSL pre-training one, labels off
    the moving scan's grid, refused options), OSError and RuntimeError as reading and matching raise them.
    """
    payload = load_checkpoint(checkpoint)
    config = match_config_for(options, payload)
    fixed_image, moving_image = read_image(fixed), read_image(moving)
    label_image = read_image(labels) if labels else None
    differences = grid_differences(moving_image, label_image) if label_image is not None else []
    if differences:
        raise ValueError(f"--labels {labels} is not on the moving scan's grid ({'; '.join(differences)}; "
                         "moving vs labels): the labels to carry over must be a label map of the moving scan "
                         f"{moving}")
    device = select_device(options.device)
    model, info = load_gvsl(payload, device=device, name=str(checkpoint))
    result = match_volumes(fixed_image, moving_image, model, fixed_modality=options.fixed_modality,
                           moving_modality=options.moving_modality, config=config, device=device)
    return FileMatch(result, info, label_image, str(fixed), str(moving), str(checkpoint))
