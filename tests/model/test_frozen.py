"""Frozen-backbone training: features computed once per view, the head learns, the backbone
stays the released ImageNet weights, and the run is reproducible."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from greenr.data.images import flip_view_names
from greenr.data.loader import Samples, batches
from greenr.errors import GreenrError
from greenr.model import frozen
from greenr.model.architectures import build_model
from greenr.model.recipe import Recipe, frozen_features, resolve, train_classifier
from greenr.model.training import predict_samples
from greenr.params import ModelParams, TrainParams
from tests.helpers.shards import prepare_folder

CPU = torch.device("cpu")


def recipe(**train: object) -> Recipe:
    params = TrainParams(
        finetune="frozen",
        epochs=12,
        lr=0.01,
        optimizer="adamw",
        schedule="cosine",
        select="last",
        feature_views=2,
        batch_size=16,
        seed=3,
        device="cpu",
    )
    return resolve(ModelParams(arch="efficientnet_lite0", image_size=64), params.model_copy(update=train))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, make_dataset) -> dict[str, Samples]:
    root = tmp_path_factory.mktemp("repo")
    make_dataset(root / "data", per_class=16, size=64)
    fractions = {"train": 0.5, "val": 0.375, "test": 0.125}
    return prepare_folder(root, ["dandelion", "grass"], recipe().spec.image_size, fractions, shard_images=5)


def first_images(samples: Samples, n: int) -> torch.Tensor:
    return next(iter(batches(samples, recipe().spec.image_size, n))).images


def test_views_are_the_centre_its_mirror_and_seeded_augmentations(data) -> None:
    images = first_images(data["train"], 4)
    aug = recipe().train.augment
    assert frozen.training_views(2) == ["centre", "hflip", "aug1", "aug2"]
    assert torch.equal(frozen.view_images(images, "hflip", aug, None), images.flip(-1).float())
    assert flip_view_names(True, True) == ["centre", "hflip", "vflip", "hvflip"]
    assert flip_view_names(False, True) == ["centre", "vflip"]
    both = frozen.view_images(images, "hvflip", aug, None)
    assert torch.equal(both, images.flip(-1).flip(-2).float())
    one = frozen.view_images(images, "aug1", aug, frozen.view_generator(0, "aug1", 0))
    assert torch.equal(one, frozen.view_images(images, "aug1", aug, frozen.view_generator(0, "aug1", 0)))
    assert not torch.equal(one, frozen.view_images(images, "aug2", aug, frozen.view_generator(0, "aug2", 0)))
    assert not torch.equal(one, frozen.view_images(images, "aug1", aug, frozen.view_generator(0, "aug1", 1)))


def test_features_do_not_depend_on_the_extraction_batch_size(data, tmp_path: Path) -> None:
    """Augmented views are drawn per fixed block of images: any batch size gives the same file."""
    torch.set_num_threads(2)
    r = recipe()
    model = build_model(r.arch, 2, pretrained=True)
    views = frozen.training_views(2)
    args = (model, r.arch, data["train"], r.spec, views, r.train.augment, 3, CPU)
    small = frozen.extract(*args, tmp_path / "a.npy", batch_size=64)
    large = frozen.extract(*args, tmp_path / "b.npy", batch_size=128)
    assert small.array.shape == (len(data["train"]), len(views), 1280)
    assert small.array.dtype == np.float16
    assert np.array_equal(np.asarray(small.array), np.asarray(large.array))
    with pytest.raises(ValueError, match="multiple of 64"):
        frozen.extract(*args, tmp_path / "c.npy", batch_size=48)


def test_the_head_learns_on_cached_features_and_the_backbone_stays_as_released(data) -> None:
    torch.set_num_threads(2)
    trained = train_classifier(recipe(), 2, data["train"], data["val"], CPU)
    assert trained.fitted.history[-1].val_acc >= 0.9
    assert trained.fitted.best_epoch == 12  # select: last
    released = build_model("efficientnet_lite0", 2, pretrained=True).state_dict()
    state = trained.model.state_dict()
    backbone = [k for k in state if not k.startswith("_fc.")]
    assert backbone and all(torch.equal(state[k], released[k]) for k in backbone)
    assert 0.05 <= trained.temperature <= 20
    # What the full model computes from pixels is what the head was validated on.
    logits = predict_samples(trained.model, data["val"], recipe().spec, CPU, 16)
    accuracy = (logits.argmax(1) == data["val"].label_tensor).float().mean()
    assert accuracy == pytest.approx(trained.fitted.history[-1].val_acc)


def test_reusing_precomputed_features_gives_the_same_model(data, tmp_path: Path) -> None:
    torch.set_num_threads(2)
    r = recipe(epochs=3)
    first = train_classifier(r, 2, data["train"], data["val"], CPU)
    model = build_model(r.arch, 2, pretrained=True)
    features = frozen_features(model, r, data["train"], data["val"], CPU, tmp_path)
    assert features.train.array.shape[:2] == (len(data["train"]), 4) and features.val.array.shape[1] == 1
    second = train_classifier(r, 2, data["train"], data["val"], CPU, features=features)
    assert all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()))
    assert first.temperature == second.temperature


TOP_PREFIXES = ("_blocks.15.", "_conv_head.", "_bn1.", "_fc.")


def test_top_trains_the_last_block_and_head_on_cached_activations(data) -> None:
    """finetune: top changes the weights of the last block, head convolution and classifier (their
    BatchNorm statistics stay released); the blocks below stay the released weights; the full model
    from pixels scores what was validated."""
    torch.set_num_threads(2)
    r = recipe(finetune="top", epochs=6)
    trained = train_classifier(r, 2, data["train"], data["val"], CPU)
    assert trained.fitted.history[-1].val_acc >= 0.9
    released = build_model("efficientnet_lite0", 2, pretrained=True).state_dict()
    state = trained.model.state_dict()
    lower = [k for k in state if not k.startswith(TOP_PREFIXES)]
    upper = [k for k, _ in trained.model.named_parameters() if k.startswith(TOP_PREFIXES)]
    assert lower and all(torch.equal(state[k], released[k]) for k in lower)
    assert upper and all(not torch.equal(state[k], released[k]) for k in upper if not k.startswith("_fc."))
    logits = predict_samples(trained.model, data["val"], r.spec, CPU, 16)
    accuracy = (logits.argmax(1) == data["val"].label_tensor).float().mean()
    assert accuracy == pytest.approx(trained.fitted.history[-1].val_acc)


def test_top_split_computes_what_the_model_computes() -> None:
    model = build_model("efficientnet_lite0", 3, pretrained=True).eval()
    with frozen.lower_part(model, "efficientnet_lite0", "top", 64) as lower:
        top = frozen.trainable_part(model, "efficientnet_lite0", "top", 64).eval()
        x = torch.rand(2, 3, 64, 64)
        with torch.no_grad():
            assert torch.equal(top(lower(x)), model(x))


def test_top_needs_an_arch_with_a_split() -> None:
    with pytest.raises(GreenrError, match="finetune: top"):
        resolve(ModelParams(arch="resnet18", image_size=64), TrainParams(finetune="top"))
