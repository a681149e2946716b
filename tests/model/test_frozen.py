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
from greenr.model.recipe import Recipe, choose, frozen_features, one_standard_error_pick, resolve, train_classifier
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
    small = frozen.extract(*args, {"frozen": tmp_path / "a.npy"}, batch_size=64)["frozen"]
    large = frozen.extract(*args, {"frozen": tmp_path / "b.npy"}, batch_size=128)["frozen"]
    assert small.array.shape == (len(data["train"]), len(views), 1280)
    assert small.array.dtype == np.float16
    assert np.array_equal(np.asarray(small.array), np.asarray(large.array))
    with pytest.raises(ValueError, match="multiple of 64"):
        frozen.extract(*args, {"frozen": tmp_path / "c.npy"}, batch_size=48)


def test_a_head_trains_with_denormals_flushed_and_they_are_restored_after(data) -> None:
    tiny = torch.tensor([1e-40])  # a denormal float32
    flushed: list[bool] = []
    train_classifier(
        recipe(epochs=2), 2, data["train"], data["val"], CPU, lambda _: flushed.append(float(tiny * 1) == 0)
    )
    assert flushed == [True, True]
    assert float(tiny * 1) != 0


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
    features = frozen_features(model, r, data["train"], data["val"], CPU, tmp_path)["frozen"]
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


@pytest.mark.parametrize("bf16", [False, True])
def test_one_pass_for_frozen_and_top_gives_frozen_its_own_features_bit_for_bit(
    data, tmp_path: Path, bf16: bool
) -> None:
    """finetune auto extracts both settings' inputs in one pass: the frozen features are the top
    blocks' pooled output of the same activations, which must be what the whole backbone computes."""
    torch.set_num_threads(2)
    r = recipe()
    model = build_model(r.arch, 2, pretrained=True)
    args = (model, r.arch, data["train"], r.spec, frozen.training_views(1), r.train.augment, 3, CPU)
    alone = frozen.extract(*args, {"frozen": tmp_path / "alone.npy"}, 64, bf16)["frozen"]
    both = frozen.extract(*args, {"frozen": tmp_path / "f.npy", "top": tmp_path / "t.npy"}, 64, bf16)
    assert np.array_equal(np.asarray(alone.array), np.asarray(both["frozen"].array))
    # top: the 192 x 2 x 2 activations below the last block at 64 px
    assert both["top"].array.shape[:2] == alone.array.shape[:2] and both["top"].array.shape[2] == 192 * 2 * 2


def test_auto_tries_what_fits_the_budget_cheapest_first() -> None:
    """The budget counts FLOPs per image against frozen's: it does not depend on the data or machine."""
    default = recipe(finetune="auto")
    assert default.candidates == ("frozen", "top") and default.over_budget == ("discriminative", "full")
    assert default.train.finetune == "frozen"
    views, epochs = default.train.feature_views + 2, default.train.epochs
    assert default.costs["discriminative"] == default.costs["full"] == pytest.approx(epochs * 3 / views, abs=1e-3)
    assert 0 < default.costs["top"] < default.costs["discriminative"]
    assert recipe(finetune="auto", budget=1).candidates == ("frozen",)
    wide = recipe(finetune="auto", budget=1 + default.costs["top"] + default.costs["discriminative"])
    assert wide.candidates == ("frozen", "top", "discriminative") and wide.over_budget == ("full",)
    assert recipe(finetune="top", budget=1).candidates == ("top",)  # a setting asked for is not budgeted
    auto = default.train.model_copy(update={"finetune": "auto"})
    scratch = resolve(ModelParams(arch="efficientnet_lite0", pretrained=False, image_size=64), auto)
    assert scratch.candidates == ("full",)


def test_auto_keeps_the_candidate_with_the_lowest_validation_loss(data) -> None:
    """Each candidate trains from the same seed on shared features; the one kept is the model its
    setting gives alone, and the evidence says why."""
    torch.set_num_threads(2)
    r = recipe(finetune="auto", epochs=4)
    trained, choice = choose(r, 2, data["train"], data["val"], CPU)
    assert choice is not None and [t.finetune for t in choice.tried] == ["frozen", "top"]
    losses = {t.finetune: t.val_loss for t in choice.tried}
    best = min(losses, key=losses.__getitem__)
    assert [t.over_best for t in choice.tried if t.finetune == best] == [0.0]
    within = [t.finetune for t in choice.tried if t.over_best <= t.standard_error]
    assert choice.picked == within[0]  # the cheapest within one standard error of the best
    alone = train_classifier(r.with_finetune(choice.picked), 2, data["train"], data["val"], CPU)
    assert all(
        torch.equal(a, b) for a, b in zip(trained.model.state_dict().values(), alone.model.state_dict().values())
    )
    assert trained.temperature == alone.temperature
    record = choice.record()
    assert record["picked"] == choice.picked and record["over_budget"] == ["discriminative", "full"]
    assert record["tried"][choice.picked]["val_loss"] == losses[choice.picked]
    single, none = choose(r.with_finetune("frozen"), 2, data["train"], data["val"], CPU)
    assert none is None


def test_one_standard_error_rule_keeps_a_pricier_recipe_only_when_it_is_clearly_better() -> None:
    """Paired over the same validation images: a lower mean loss inside the noise does not pay for
    a pricier recipe; a difference of many standard errors does; an exact tie keeps the cheaper."""
    generator = torch.Generator().manual_seed(0)
    frozen_losses = torch.rand(50, generator=generator, dtype=torch.float64)
    noisy = frozen_losses - 0.02 + torch.tensor([0.3, -0.3] * 25, dtype=torch.float64)  # SE of the gain: 0.043
    picked, evidence = one_standard_error_pick({"frozen": frozen_losses, "top": noisy})
    excess, error = evidence["frozen"]
    assert float(noisy.mean()) < float(frozen_losses.mean()) and 0 < excess <= error
    assert picked == "frozen" and evidence["top"] == (0.0, 0.0)
    clearly = frozen_losses - 0.2
    picked, evidence = one_standard_error_pick({"frozen": frozen_losses, "top": clearly, "full": clearly + 0.5})
    assert picked == "top" and evidence["frozen"] == (pytest.approx(0.2), 0.0)
    assert one_standard_error_pick({"frozen": frozen_losses, "top": frozen_losses.clone()})[0] == "frozen"
