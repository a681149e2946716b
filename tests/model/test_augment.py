"""Batched augmentation: shape, range, and determinism per generator seed."""

from __future__ import annotations

import torch

from greenr.model.training import augment
from greenr.params import AugmentParams

BATCH = torch.randint(0, 256, (6, 3, 40, 40), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
STRONG = AugmentParams(hflip=True, vflip=True, crop_scale_min=0.3, color_jitter=0.5)


def run(params: AugmentParams, seed: int) -> torch.Tensor:
    return augment(BATCH, params, torch.Generator().manual_seed(seed))


def test_shape_dtype_and_range():
    out = run(STRONG, 1)
    assert out.shape == BATCH.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 255


def test_same_seed_same_output_other_seed_other_output():
    assert torch.equal(run(STRONG, 1), run(STRONG, 1))
    assert not torch.equal(run(STRONG, 1), run(STRONG, 2))
    assert not torch.equal(run(AugmentParams(), 3), BATCH.float())


def test_everything_off_is_the_identity():
    off = AugmentParams(hflip=False, vflip=False, crop_scale_min=1.0, color_jitter=0.0)
    assert torch.equal(run(off, 5), BATCH.float())


def test_a_flip_alone_mirrors_whole_images():
    flip_only = AugmentParams(hflip=True, vflip=False, crop_scale_min=1.0, color_jitter=0.0)
    out = run(flip_only, 4)
    for original, augmented in zip(BATCH.float(), out):
        assert torch.allclose(augmented, original, atol=1e-3) or torch.allclose(augmented, original.flip(-1), atol=1e-3)
