"""Frozen-backbone training: features computed once per view, the head learns, the backbone
stays the released ImageNet weights, and the run is reproducible."""

from __future__ import annotations

import pytest
import torch

from greenr.data.dataset import Example, file_md5, list_class_images
from greenr.data.images import flip_view_names
from greenr.data.splitting import stratified_split
from greenr.data.tensors import TensorDataset, load_tensors
from greenr.model import frozen
from greenr.model.architectures import build_model
from greenr.model.recipe import Recipe, frozen_features, resolve, train_classifier
from greenr.params import ModelParams, TrainParams

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
def data(tmp_path_factory: pytest.TempPathFactory, make_dataset) -> dict[str, TensorDataset]:
    root = tmp_path_factory.mktemp("repo")
    make_dataset(root / "data", per_class=16, size=64)
    rows = [
        Example(p.relative_to(root).as_posix(), label, file_md5(p))
        for label, files in list_class_images(root / "data").items()
        for p in files
    ]
    split = stratified_split(rows, {"train": 0.5, "val": 0.375, "test": 0.125}, seed=0)
    spec = recipe().spec
    return {name: load_tensors(split[name], root, spec, workers=2) for name in ("train", "val")}


def test_views_are_the_centre_its_mirror_and_seeded_augmentations(data) -> None:
    images = data["train"].images[:4]
    assert frozen.training_views(2) == ["centre", "hflip", "aug1", "aug2"]
    assert torch.equal(frozen.view_images(images, "hflip", recipe().train.augment, 0), images.flip(-1).float())
    assert flip_view_names(True, True) == ["centre", "hflip", "vflip", "hvflip"]
    assert flip_view_names(False, True) == ["centre", "vflip"]
    both = frozen.view_images(images, "hvflip", recipe().train.augment, 0)
    assert torch.equal(both, images.flip(-1).flip(-2).float())
    one = frozen.view_images(images, "aug1", recipe().train.augment, 0)
    assert torch.equal(one, frozen.view_images(images, "aug1", recipe().train.augment, 0))
    assert not torch.equal(one, frozen.view_images(images, "aug2", recipe().train.augment, 0))


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
    with torch.inference_mode():
        from greenr.model.inference import predict_logits

        logits = predict_logits(trained.model, data["val"].images, recipe().spec)
    assert (logits.argmax(1) == data["val"].labels).float().mean() == pytest.approx(trained.fitted.history[-1].val_acc)


def test_reusing_precomputed_features_gives_the_same_model(data) -> None:
    torch.set_num_threads(2)
    r = recipe(epochs=3)
    first = train_classifier(r, 2, data["train"], data["val"], CPU)
    model = build_model(r.arch, 2, pretrained=True)
    features = frozen_features(model, r, data["train"].images, data["val"].images, CPU)
    assert features.train.shape[:2] == (4, len(data["train"])) and features.val.shape[0] == 1
    second = train_classifier(r, 2, data["train"], data["val"], CPU, features=features)
    assert all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()))
    assert first.temperature == second.temperature
