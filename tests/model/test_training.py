"""`fit` on tiny generated images: it learns, and the same seed gives the same weights on CPU."""

from __future__ import annotations

import pytest
import torch

from greenr.data.loader import Samples
from greenr.hardware import native_bf16
from greenr.model.architectures import build_model, get_arch
from greenr.model.device import use_bf16
from greenr.model.training import FitResult, fit, seed_everything
from greenr.params import AugmentParams, TrainParams
from tests.helpers.shards import prepare_folder

ARCH = "resnet18"
SPEC = get_arch(ARCH).preprocessing(32)
PARAMS = TrainParams(
    epochs=4,
    finetune="full",
    batch_size=12,
    lr=1e-3,
    seed=7,
    optimizer="adam",
    weight_decay=0.0,
    schedule="constant",
    select="best",
    device="cpu",
    num_threads=2,
    augment=AugmentParams(hflip=True, crop_scale_min=0.8, color_jitter=0.1),
)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, make_dataset) -> dict[str, Samples]:
    """Yellow blobs vs green noise, 30 per class at 40 px, split 60/30/10, prepared into shards."""
    root = tmp_path_factory.mktemp("repo")
    make_dataset(root / "data", per_class=30, size=40)
    return prepare_folder(root, ["dandelion", "grass"], SPEC.image_size, shard_images=8)


def train(data: dict[str, Samples]) -> FitResult:
    seed_everything(PARAMS.seed)
    torch.manual_seed(PARAMS.seed)
    model = build_model(ARCH, 2, pretrained=False)
    return fit(model, ARCH, data["train"], data["val"], SPEC, PARAMS, torch.device("cpu"))


def test_fit_learns_and_is_reproducible_with_the_same_seed(data: dict[str, Samples]):
    torch.set_num_threads(2)
    first, second = train(data), train(data)

    assert len(first.history) == PARAMS.epochs
    assert first.best.val_acc >= 0.85, [round(s.val_acc, 3) for s in first.history]
    assert first.best_epoch == max(
        range(1, PARAMS.epochs + 1), key=lambda e: (first.history[e - 1].val_acc, -first.history[e - 1].val_loss)
    )
    assert not first.model.training
    first_state, second_state = first.model.state_dict(), second.model.state_dict()
    assert first_state.keys() == second_state.keys()
    assert all(torch.equal(first_state[k], second_state[k]) for k in first_state)
    assert [s.row() for s in first.history] == [s.row() for s in second.history]


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
def test_schedules_step_per_batch_and_anneal_to_almost_zero(schedule: str) -> None:
    from greenr.model.training import make_scheduler

    params = PARAMS.model_copy(update={"schedule": schedule, "lr": 0.01, "epochs": 3})
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=params.lr)
    scheduler = make_scheduler(optimizer, params, steps_per_epoch=5)
    assert scheduler is not None
    seen = []
    for _ in range(3 * 5):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert max(seen) == pytest.approx(0.01, rel=0.05)
    assert seen[-1] < 0.01 * 0.05
    if schedule == "onecycle":  # warms up first: the peak is a quarter of the way in
        assert seen.index(max(seen)) in range(2, 6)
    assert make_scheduler(optimizer, PARAMS, steps_per_epoch=5) is None  # constant


def test_select_last_keeps_the_final_epoch(data: dict[str, Samples]) -> None:
    params = PARAMS.model_copy(update={"select": "last", "epochs": 2, "schedule": "cosine", "label_smoothing": 0.1})
    seed_everything(params.seed)
    result = fit(build_model(ARCH, 2), ARCH, data["train"], data["val"], SPEC, params, torch.device("cpu"))
    assert result.best_epoch == 2
    # Label smoothing keeps the training loss away from zero: even a perfect fit pays ~0.2.
    assert result.history[-1].train_loss > 0.1


def test_precision_auto_means_bf16_only_where_the_cpu_has_it() -> None:
    cpu = torch.device("cpu")
    assert use_bf16("fp32", cpu) is False
    assert use_bf16("auto", cpu) is native_bf16()


def test_forced_bf16_trains_on_any_cpu(data: dict[str, Samples]) -> None:
    """bf16 autocast + channels_last: emulated (slow) without native bf16, but it must run."""
    params = PARAMS.model_copy(update={"precision": "bf16", "epochs": 2})
    seed_everything(params.seed)
    result = fit(build_model(ARCH, 2), ARCH, data["train"], data["val"], SPEC, params, torch.device("cpu"))
    assert all(torch.isfinite(torch.tensor(s.train_loss)) for s in result.history)
    assert result.model(torch.zeros(1, 3, 32, 32)).dtype == torch.float32  # outside autocast: fp32 weights


@pytest.mark.skipif(not native_bf16(), reason="this CPU has no native bf16 (AMX or AVX512-BF16): auto stays fp32")
def test_auto_precision_on_a_bf16_cpu_learns_and_is_reproducible(data: dict[str, Samples]) -> None:
    params = PARAMS.model_copy(update={"precision": "auto"})
    runs = []
    for _ in range(2):
        seed_everything(params.seed)
        runs.append(fit(build_model(ARCH, 2), ARCH, data["train"], data["val"], SPEC, params, torch.device("cpu")))
    assert runs[0].best.val_acc >= 0.85
    assert [s.row() for s in runs[0].history] == [s.row() for s in runs[1].history]


def test_batch_mixing_still_learns_and_changes_the_run(data: dict[str, Samples]) -> None:
    mixed_augment = PARAMS.augment.model_copy(update={"mixup": 0.2, "cutmix": 1.0})
    params = PARAMS.model_copy(update={"augment": mixed_augment, "epochs": 6})
    seed_everything(params.seed)
    mixed = fit(build_model(ARCH, 2), ARCH, data["train"], data["val"], SPEC, params, torch.device("cpu"))
    assert mixed.best.val_acc >= 0.85, [round(s.val_acc, 3) for s in mixed.history]
    plain = train(data)
    assert mixed.history[0].train_loss != plain.history[0].train_loss
