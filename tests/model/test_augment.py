"""Batched augmentation: shape, range, and determinism per generator seed."""

from __future__ import annotations

import torch

from greenr.model.training import augment, mix_batch
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


def test_mixing_off_leaves_the_batch_alone():
    x = BATCH.float()
    mixed, partner, weight = mix_batch(x, AugmentParams(), torch.Generator().manual_seed(0))
    assert mixed is x and partner is None and weight == 1.0


def test_mixup_blends_each_image_with_its_partner_by_the_label_weight():
    x = BATCH.float()
    mixed, partner, weight = mix_batch(x, AugmentParams(mixup=0.4), torch.Generator().manual_seed(1))
    assert partner is not None and 0.0 <= weight <= 1.0
    assert torch.allclose(mixed, weight * x + (1 - weight) * x[partner])


def test_cutmix_pastes_one_box_whose_area_sets_the_label_weight():
    x = BATCH.float()
    mixed, partner, weight = mix_batch(x, AugmentParams(cutmix=1.0), torch.Generator().manual_seed(2))
    assert partner is not None
    from_partner = (mixed == x[partner]).all(dim=1) & (mixed != x).any(dim=1)
    moved = (mixed != x).any(dim=1)
    # Every changed pixel came from the partner, and the pasted share is 1 - weight.
    assert torch.equal(moved, from_partner)
    pasted = (mixed == x[partner]).all(dim=1)[partner != torch.arange(len(x))].float().mean()
    assert abs(float(pasted) - (1 - weight)) < 0.05


def test_mixing_is_reproducible_per_generator_seed():
    params = AugmentParams(mixup=0.2, cutmix=1.0)
    first = mix_batch(BATCH.float(), params, torch.Generator().manual_seed(3))
    again = mix_batch(BATCH.float(), params, torch.Generator().manual_seed(3))
    assert torch.equal(first[0], again[0]) and first[2] == again[2]
