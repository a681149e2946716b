"""`fit` on tiny generated images: it learns, and the same seed gives the same weights on CPU."""

from __future__ import annotations

import pytest
import torch

from greenr.data.dataset import Example, file_md5, list_class_images
from greenr.data.splitting import stratified_split
from greenr.data.tensors import TensorDataset, load_tensors
from greenr.model.architectures import build_model, get_arch
from greenr.model.training import FitResult, fit, seed_everything
from greenr.params import AugmentParams, TrainParams

ARCH = "resnet18"
SPEC = get_arch(ARCH).preprocessing(32)
PARAMS = TrainParams(
    epochs=4,
    finetune="full",
    batch_size=12,
    lr=1e-3,
    seed=7,
    device="cpu",
    num_threads=2,
    augment=AugmentParams(hflip=True, crop_scale_min=0.8, color_jitter=0.1),
)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, make_dataset) -> dict[str, TensorDataset]:
    """Yellow blobs vs green noise, 30 per class at 40 px, split 60/30/10."""
    root = tmp_path_factory.mktemp("repo")
    make_dataset(root / "data", per_class=30, size=40)
    rows = [
        Example(p.relative_to(root).as_posix(), label, file_md5(p))
        for label, files in list_class_images(root / "data").items()
        for p in files
    ]
    split = stratified_split(rows, {"train": 0.6, "val": 0.3, "test": 0.1}, seed=0)
    return {name: load_tensors(split[name], root, SPEC, workers=2) for name in ("train", "val")}


def train(data: dict[str, TensorDataset]) -> FitResult:
    seed_everything(PARAMS.seed)
    torch.manual_seed(PARAMS.seed)
    model = build_model(ARCH, 2, pretrained=False)
    return fit(model, ARCH, data["train"], data["val"], SPEC, PARAMS, torch.device("cpu"))


def test_fit_learns_and_is_reproducible_with_the_same_seed(data: dict[str, TensorDataset]):
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
