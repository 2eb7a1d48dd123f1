"""The network a fine-tuning run starts from: pre-trained backbone (ours or published) or random, plus a new head."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from gvsl.checkpoints import SEGMENTATION_FORMAT, describe, load_checkpoint, model_state_dict_matches
from gvsl.finetune.config import FROZEN_BACKBONE_MODES, PRETRAINED_MODES
from gvsl.networks import DEFAULT_CHANNELS
from gvsl.segment.model import SegmentationNet
from gvsl.train.state import derive_seed

BACKBONE_PREFIX = "unet."


def backbone_state(init: str) -> tuple[dict[str, torch.Tensor], tuple[int, ...]]:
    """The ``unet.*`` weights (prefix removed) and widths of a pre-training checkpoint or published state dict."""
    payload = load_checkpoint(init)
    if payload.get("format") == SEGMENTATION_FORMAT:
        state, channels = payload["model"], tuple(payload["channels"])
    else:
        state, info = describe(payload)
        channels = info.channels
    return {k[len(BACKBONE_PREFIX):]: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}, channels


def build_segmentation_net(mode: str, n_classes: int, seed: int, init: Optional[str] = None,
                           channels: Optional[Sequence[int]] = None) -> SegmentationNet:
    """A ``SegmentationNet`` for ``mode``: "scratch" and "random-linear" are random (seeded; ``init``'s widths
    when ``channels`` is not given, e.g. a collection run's matching network); "finetune"/"linear" load ``init``'s
    backbone.

    The head is always new and, for one seed and one set of widths, the same in every mode (the random backbone is
    drawn first in every mode). ``channels`` must equal the checkpoint's widths when both are given (ValueError
    naming the mis-shaped keys otherwise). "linear" and "random-linear" freeze the backbone (``requires_grad=False``).
    """
    if mode not in PRETRAINED_MODES:
        widths = channels or (backbone_state(init)[1] if init else DEFAULT_CHANNELS)
        torch.manual_seed(derive_seed(seed, "init"))
        model = SegmentationNet(n_classes, widths)
    elif init is None:
        raise ValueError(f"--mode {mode} needs --init CHECKPOINT")
    else:
        state, init_channels = backbone_state(init)
        torch.manual_seed(derive_seed(seed, "init"))
        model = SegmentationNet(n_classes, channels or init_channels)
        try:
            model_state_dict_matches(model.unet, state)
        except ValueError as exc:
            raise ValueError(f"--init {init} (widths {','.join(map(str, init_channels))}) does not fit a network of "
                             f"widths {','.join(map(str, model.channels))}: {exc}") from exc
        model.unet.load_state_dict(state, strict=True)
    model.unet.requires_grad_(mode not in FROZEN_BACKBONE_MODES)
    return model
