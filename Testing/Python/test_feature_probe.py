"""The measures of benchmarks/feature_probe.py: effective rank counts independent channels, the ridge probe reads
structures that the features encode and not those they do not."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import feature_probe  # noqa: E402


def test_effective_rank_counts_the_channels_that_carry_their_own_signal():
    rng = np.random.default_rng(0)
    signal = rng.normal(size=(20_000, 1))
    collapsed = signal @ rng.normal(size=(1, 16))  # 16 channels, one signal
    assert abs(feature_probe.effective_rank(collapsed) - 1.0) < 1e-6
    independent = rng.normal(size=(20_000, 4))
    assert abs(feature_probe.effective_rank(independent) - 4.0) < 0.1


def test_the_probe_reads_encoded_structures_and_nothing_from_noise():
    rng = np.random.default_rng(0)
    values = [3, 7]
    train_labels = rng.choice([0, 3, 7], size=30_000, p=[0.8, 0.1, 0.1])
    test_labels = rng.choice([0, 3, 7], size=30_000, p=[0.8, 0.1, 0.1])

    def encoding(labels: np.ndarray) -> np.ndarray:  # one channel per structure, plus noise channels
        return np.c_[labels == 3, labels == 7, rng.normal(size=(len(labels), 3))].astype(np.float32)

    readable = feature_probe.probe_dice(encoding(train_labels), train_labels, encoding(test_labels), test_labels,
                                        values)
    noise = feature_probe.probe_dice(rng.normal(size=(30_000, 5)), train_labels, rng.normal(size=(30_000, 5)),
                                     test_labels, values)
    assert readable > 0.99
    assert noise < 0.3


def test_layer_features_sit_on_the_image_grid_as_the_backbone_crops_its_output():
    import torch

    from gvsl.finetune.model import build_segmentation_net

    model = build_segmentation_net("scratch", 3, 0, None, (4, 8, 8, 8, 8, 8, 8, 4, 4)).eval()
    image = np.random.default_rng(0).random((20, 24, 18), dtype=np.float32)  # padded to 32³ on both sides
    features = feature_probe.layer_features(model, image)
    with torch.no_grad():
        _, local = model.unet(torch.from_numpy(image)[None, None])
    assert all(f.shape[0] == image.size for f in features.values())
    np.testing.assert_allclose(features["up4"], local[0].reshape(local.shape[1], -1).T.numpy(), atol=1e-6)
