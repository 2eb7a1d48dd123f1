"""Saving and loading GVSL checkpoints: ours and the published GVSL state dict.

Our checkpoint is a dict ``{"format": "gvsl", "version": 1, "model": state_dict,
"channels": [9 ints], "conventions": str, "architecture": str, "iteration": int, ...}`` holding only
tensors and plain Python values, so it loads with ``weights_only=True``. A
published GVSL checkpoint is a plain state dict of the original network; it
uses the ``"original"`` conventions and its widths are read off the shapes.
"""
from __future__ import annotations

import dataclasses
import errno
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gvsl.atomic_files import write_atomically
from gvsl.networks import GVSL
from gvsl.networks.conventions import check_conventions

FORMAT = "gvsl"
VERSION = 1
SEGMENTATION_FORMAT = "gvsl-seg"  # fine-tuned models (gvsl.segment.model), which matching cannot use
# (key of a conv weight, axis holding the width) for each of the nine backbone widths.
_WIDTH_KEYS = (
    ("unet.inc.double_conv.0.weight", 0),
    *((f"unet.down{i}.maxpool_conv.1.double_conv.0.weight", 0) for i in range(1, 5)),
    *((f"unet.up{i}.conv.double_conv.0.weight", 0) for i in range(1, 5)),
)


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint holds: ``kind`` is "gvsl" (ours) or "published" (a plain original state dict);
    ``architecture``: "paper" or "correlation" (``gvsl.networks.GVSL``)."""

    kind: str
    channels: tuple[int, ...]
    conventions: str
    iteration: int | None
    architecture: str = "paper"


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically (``gvsl.atomic_files``).

    A failure (read-only folder, full disk) raises OSError with a message naming
    the path and leaves any existing file at ``path`` untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_atomically(path, lambda file: torch.save(payload, file))
    except OSError as exc:
        reason = "disk full" if exc.errno == errno.ENOSPC else exc.strerror
        raise OSError(exc.errno, f"cannot write checkpoint {path}: {reason}") from exc


def is_pytorch_file(path: Path) -> bool:
    """Whether ``path`` starts like a file written by ``torch.save``: a zip archive (the format since PyTorch 1.6,
    "PK\\x03\\x04", also when truncated) or a pickle stream (older files: the pickle protocol byte 0x80)."""
    with open(path, "rb") as file:
        head = file.read(4)
    return head == b"PK\x03\x04" or head[:1] == b"\x80"


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint file with ``weights_only=True``.

    Raises ValueError for a missing file, a file that is not a PyTorch checkpoint (an image, a text file...), a
    truncated or corrupt one, and a pickle that would need to run code (which is never executed).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    if not is_pytorch_file(path):
        raise ValueError(f"{path} is not a PyTorch checkpoint (GVSL checkpoints are .pt files written by gvsl "
                         "pretrain or gvsl finetune, or the published .pth state dict)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"checkpoint {path} holds Python objects that would need code execution to load; refused for safety "
            "(GVSL checkpoints hold only tensors and plain values)"
        ) from exc
    except Exception as exc:  # torch.load fails on damaged files with many exception types
        raise ValueError(f"checkpoint {path} is not a readable PyTorch file (truncated or corrupt?): {exc}") from exc
    if not isinstance(payload, dict):
        raise ValueError(f"checkpoint {path} holds a {type(payload).__name__}, expected a dict")
    return payload


def describe(payload: dict[str, Any]) -> tuple[dict[str, torch.Tensor], CheckpointInfo]:
    """The model state dict in ``payload`` and what it is (ours or published)."""
    if payload.get("format") == FORMAT:
        state = payload.get("model")
        if not isinstance(state, dict):
            raise ValueError("GVSL checkpoint has no 'model' state dict")
        conventions = str(payload.get("conventions", "corrected"))
        check_conventions(conventions)
        channels = tuple(int(c) for c in payload.get("channels") or infer_channels(state))
        architecture = str(payload.get("architecture") or "paper")
        return state, CheckpointInfo("gvsl", channels, conventions, payload.get("iteration"), architecture)
    if all(isinstance(v, torch.Tensor) for v in payload.values()):
        return payload, CheckpointInfo("published", infer_channels(payload), "original", None)
    if payload.get("format") == SEGMENTATION_FORMAT:
        init = (payload.get("config") or {}).get("init")
        raise ValueError("a fine-tuned segmentation model (gvsl finetune), not a pre-training checkpoint: use it with "
                         "gvsl segment; here use the pre-training checkpoint it was fine-tuned from"
                         + (f" ({init})" if init else "") + " or RUN_DIR/checkpoints/iter_NNNNNN.pt of a gvsl "
                         "pretrain run")
    raise ValueError("not a GVSL checkpoint: neither our format nor a plain state dict of tensors")


def infer_channels(state: dict[str, torch.Tensor]) -> tuple[int, ...]:
    """The nine backbone widths read off a GVSL state dict's tensor shapes."""
    missing = [k for k, _ in _WIDTH_KEYS if k not in state]
    if missing:
        raise ValueError(f"not a GVSL state dict: missing {', '.join(missing[:3])}"
                         + (f" and {len(missing) - 3} more" if len(missing) > 3 else ""))
    return tuple(int(state[k].shape[axis]) for k, axis in _WIDTH_KEYS)


def model_state_dict_matches(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Raise ValueError naming missing, unexpected and mis-shaped keys, if any."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    shaped = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
              for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", extra), ("mis-shaped", shaped)):
        if items:
            more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
            problems.append(f"{label}: {', '.join(items[:5])}{more}")
    if problems:
        raise ValueError("checkpoint does not fit this GVSL network; " + "; ".join(problems))


def load_gvsl(source: str | os.PathLike | dict[str, Any], device: str | torch.device = "cpu",
              conventions: str | None = None, name: str | None = None) -> tuple[GVSL, CheckpointInfo]:
    """Build a GVSL network with the checkpoint's widths and load its weights.

    ``source`` is a file path or an already loaded payload (``name``: its file, for messages). ``conventions``
    overrides the checkpoint's own (rarely right: a network trained under one
    convention predicts matrices and fields meant for it).
    """
    payload = source if isinstance(source, dict) else load_checkpoint(source)
    name = name or (None if isinstance(source, dict) else str(source))
    try:
        state, info = describe(payload)
    except ValueError as exc:
        raise ValueError(f"checkpoint {name}: {exc}" if name else str(exc)) from exc
    if conventions is not None:
        check_conventions(conventions)
        info = dataclasses.replace(info, conventions=conventions)
    model = GVSL(channels=info.channels, conventions=info.conventions, architecture=info.architecture)
    model_state_dict_matches(model, state)
    model.load_state_dict(state, strict=True)
    return model.to(device), info


def checkpoint_payload(kind: str, version: int, model: torch.nn.Module, iteration: int,
                       **fields: Any) -> dict[str, Any]:
    """The payload of one of our checkpoints: the fields every format has (``format`` ``kind``, its ``version``, the
    ``model`` state dict, the nine backbone ``channels`` of ``model.channels``, the ``iteration``) and ``fields``."""
    return {"format": kind, "version": version, "model": model.state_dict(), "channels": list(model.channels),
            "iteration": int(iteration), **fields}


def gvsl_payload(model: GVSL, iteration: int, **extra: Any) -> dict[str, Any]:
    """Our checkpoint payload for ``model`` (add optimizer, scaler, rng, config via ``extra``)."""
    return checkpoint_payload(FORMAT, VERSION, model, iteration, conventions=model.conventions,
                              architecture=model.architecture, **extra)


# gvsl demo's narrow widths: an untrained network's stage of a match stays a few seconds on a CPU
UNTRAINED_CHANNELS = (4, 8, 16, 32, 64, 32, 16, 8, 4)
UNTRAINED_ARCHITECTURE = "correlation"  # gvsl.train.config.DEFAULT_ARCHITECTURE: what new runs train


def write_untrained_checkpoint(path: str | os.PathLike, seed: int = 0) -> Path:
    """Save a GVSL network at its seeded initialisation (iteration 0) as our checkpoint; returns the path.

    ``gvsl match`` uses it when no checkpoint is given: the refinement on the pair then does the matching (carrying
    labels between brains it ends at the same Dice as from a pre-trained network; benchmarks/RESULTS.md).
    """
    return save_checkpoint(path, gvsl_payload(untrained_gvsl(seed), 0))


def untrained_gvsl(seed: int = 0) -> GVSL:
    """The GVSL network that matches when no checkpoint is given: ``UNTRAINED_CHANNELS`` at its seeded
    initialisation."""
    torch.manual_seed(seed)
    return GVSL(channels=UNTRAINED_CHANNELS, architecture=UNTRAINED_ARCHITECTURE)
