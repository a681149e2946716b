"""Checkpoint round trip: weights plus what rebuilds the model, loaded with weights_only."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pytest
import torch
from torch import nn

from greenr.data.images import Preprocessing
from greenr.errors import GreenrError
from greenr.model import checkpoint
from greenr.model.architectures import build_model
from greenr.model.inference import predict_proba
from greenr.model.spec import ModelSpec

PREPROCESSING = Preprocessing(image_size=32)
CLASSES = ["dandelion", "grass"]
SPEC = ModelSpec("resnet18", CLASSES, PREPROCESSING)


@pytest.fixture
def model() -> nn.Module:
    torch.manual_seed(0)
    return build_model("resnet18", len(CLASSES)).eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randint(0, 256, (4, 3, 32, 32), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)


def test_round_trip_gives_the_same_probabilities(tmp_path: Path, model: nn.Module, images: torch.Tensor):
    path = tmp_path / "models" / "stage-1.pth"
    spec = dataclasses.replace(SPEC, meta={"best_epoch": 3}, temperature=1.5, flip_average=True)
    sha = checkpoint.save(path, model, spec)

    loaded = checkpoint.load(path)

    assert loaded.spec == spec and loaded.spec.image_size == 32 and loaded.sha256 == sha
    rebuilt = loaded.build("cpu")
    assert not rebuilt.training
    assert torch.equal(predict_proba(rebuilt, images, PREPROCESSING), predict_proba(model, images, PREPROCESSING))
    assert not list(path.parent.glob(".*.tmp"))


def test_the_file_loads_with_weights_only(tmp_path: Path, model: nn.Module):
    path = tmp_path / "ckpt.pth"
    checkpoint.save(path, model, SPEC)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format"] == checkpoint.FORMAT_VERSION and "fc.weight" in raw["model"]


def test_same_model_gives_the_same_bytes(model: nn.Module):
    first = checkpoint.to_bytes(model, SPEC)
    assert checkpoint.to_bytes(model, SPEC) == first


def test_a_pickled_module_is_refused():
    buffer = io.BytesIO()
    torch.save({"model": nn.Linear(2, 2)}, buffer)  # a whole module needs unpickling code
    with pytest.raises(GreenrError, match="not a readable checkpoint"):
        checkpoint.from_bytes(buffer.getvalue())


def test_corrupt_file_is_a_clear_error(tmp_path: Path, model: nn.Module):
    path = tmp_path / "ckpt.pth"
    checkpoint.save(path, model, SPEC)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(GreenrError) as err:
        checkpoint.load(path)
    assert "not a readable checkpoint" in err.value.what and "dvc" in err.value.fix


def test_missing_keys_are_a_clear_error():
    buffer = io.BytesIO()
    torch.save({"model": {}, "arch": "resnet18"}, buffer)
    with pytest.raises(GreenrError, match="lacks the checkpoint keys"):
        checkpoint.from_bytes(buffer.getvalue())


def test_other_format_version_is_a_clear_error(model: nn.Module):
    raw = torch.load(io.BytesIO(checkpoint.to_bytes(model, SPEC)), weights_only=True)
    raw["format"] = 99
    buffer = io.BytesIO()
    torch.save(raw, buffer)
    with pytest.raises(GreenrError, match="format 99"):
        checkpoint.from_bytes(buffer.getvalue())


def test_missing_file_is_a_clear_error(tmp_path: Path):
    with pytest.raises(GreenrError) as err:
        checkpoint.load(tmp_path / "nope.pth")
    assert "does not exist" in err.value.what and "dvc pull" in err.value.fix


def test_weights_that_do_not_fit_the_classes_are_a_clear_error(model: nn.Module):
    ckpt = checkpoint.from_bytes(checkpoint.to_bytes(model, dataclasses.replace(SPEC, classes=["a", "b", "c"])))
    with pytest.raises(GreenrError, match="do not fit"):
        ckpt.build()


def test_a_failed_save_keeps_the_old_file_and_leaves_no_temp_file(
    tmp_path: Path, model: nn.Module, monkeypatch: pytest.MonkeyPatch
):
    path = tmp_path / "ckpt.pth"
    checkpoint.save(path, model, SPEC)
    before = path.read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("greenr.atomic.os.fsync", full_disk)
    with pytest.raises(GreenrError, match="no space left .* as it was before this write"):
        checkpoint.save(path, model, dataclasses.replace(SPEC, classes=["x", "y"]))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]
