"""Bad input to the stages: a clear message, exit status 2, no traceback, nothing half-written."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from tests.helpers.images import make_images
from tests.helpers.project import TINY_PARAMS, copy_project, project_env, run, set_params


@pytest.fixture
def project(tmp_path: Path) -> Path:
    copy_project(tmp_path / "p")
    for label in ("dandelion", "grass"):
        make_images(tmp_path / "p" / "data" / label, label, 8, 40)
    set_params(tmp_path / "p", TINY_PARAMS)
    return tmp_path / "p"


def stage(project: Path, name: str, tmp_path: Path):
    env = project_env(project, tmp_path / "state")
    return run([sys.executable, "-m", f"stages.{name}"], project, env, check=False)


def assert_clean_failure(result, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_a_listed_class_without_its_folder(project, tmp_path):
    set_params(project, {"data": {"classes": ["dandelion", "grass"]}})
    shutil.rmtree(project / "data" / "grass")
    assert_clean_failure(stage(project, "split", tmp_path), "data.classes", "no images for grass", "fix:")
    assert not (project / "splits").exists()


def test_an_empty_class_folder_is_no_class(project, tmp_path):
    for f in (project / "data" / "dandelion").iterdir():
        f.unlink()
    result = stage(project, "split", tmp_path)
    assert_clean_failure(result, "1 class folder(s) with images (grass)", "at least 2")
    assert "dandelion: no images" in result.stderr  # the warning says why it was left out


def test_corrupt_image_is_skipped_and_reported(project, tmp_path):
    (project / "data" / "grass" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    result = stage(project, "split", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "broken.jpg" in result.stderr and "skipping 1 unreadable" in result.stderr
    manifests = "".join((project / "splits" / f"{s}.csv").read_text() for s in ("train", "val", "test"))
    assert "broken.jpg" not in manifests and manifests.count(".jpg") == 16


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        ({"train": {"lerning_rate": 0.1}}, ["train.lerning_rate: unknown key"]),
        ({"train": {"lrr": 0.1}}, ["did you mean 'lr'?"]),
        ({"train": {"epochs": 0}}, ["train.epochs", "greater than or equal to 1"]),
        ({"train": {"batch_size": "many"}}, ["train.batch_size"]),
        ({"model": {"arch": "resnet50"}}, ["model.arch"]),
        ({"train": {"augment": {"hflipp": True}}}, ["train.augment.hflipp: unknown key", "'hflip'"]),
    ],
)
def test_bad_train_params_fail_before_any_work(project, tmp_path, overrides, fragments):
    set_params(project, overrides)
    assert_clean_failure(stage(project, "train", tmp_path), *fragments)
    assert not (project / "models").exists()


def test_split_fractions_must_sum_to_one(project, tmp_path):
    set_params(project, {"split": {"train": 0.8, "val": 0.15, "test": 0.15}})
    assert_clean_failure(stage(project, "split", tmp_path), "must sum to 1")


def test_pretrained_offline_fails_fast_with_advice(project, tmp_path, monkeypatch):
    assert stage(project, "split", tmp_path).returncode == 0
    assert stage(project, "prepare", tmp_path).returncode == 0
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    set_params(project, {"model": {"arch": "resnet18", "pretrained": True}})
    result = stage(project, "train", tmp_path)
    assert_clean_failure(result, "ImageNet weights for resnet18", "model.pretrained: false", "efficientnet_lite0")
    assert not (project / "models" / "stage-1.pth").exists()


def test_missing_checkpoint_for_evaluate(project, tmp_path):
    assert stage(project, "split", tmp_path).returncode == 0
    assert_clean_failure(stage(project, "evaluate", tmp_path), "stage-1.pth does not exist", "dvc repro")


def test_corrupt_checkpoint_for_evaluate(project, tmp_path):
    assert stage(project, "split", tmp_path).returncode == 0
    (project / "models").mkdir()
    (project / "models" / "stage-1.pth").write_bytes(b"PK\x03\x04 garbage")
    assert_clean_failure(stage(project, "evaluate", tmp_path), "not a readable checkpoint")
    assert not (project / "metrics" / "evaluate.json").exists()
