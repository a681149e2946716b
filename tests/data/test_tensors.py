"""The decoded-once tensors and the normalisation every model input gets."""

from __future__ import annotations

import pytest
import torch

from greenr.data.images import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from greenr.data.tensors import normalize


def test_normalize_matches_a_hand_computation():
    spec = Preprocessing(image_size=2)
    batch = torch.tensor([0, 128, 255, 7], dtype=torch.uint8).view(1, 1, 2, 2).repeat(2, 3, 1, 1)
    out = normalize(batch, spec)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 2, 2)
    assert out.is_contiguous(memory_format=torch.channels_last)
    for channel in range(3):
        for (y, x), value in {(0, 0): 0, (0, 1): 128, (1, 0): 255, (1, 1): 7}.items():
            expected = (value / 255 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]
            assert out[1, channel, y, x].item() == pytest.approx(expected, abs=1e-5)
