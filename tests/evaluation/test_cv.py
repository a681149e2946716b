"""`greenr cv`: stratified, disjoint folds over train + val only, the train stage's recipe per
fold, and a table per setting."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from greenr.data.dataset import Example, write_classes
from greenr.data.shards import read_index
from greenr.errors import GreenrError
from greenr.evaluation import cv
from greenr.hardware import available_cpus, cpu_model, native_bf16
from greenr.paths import CLASSES_FILE, SHARDS_DIR
from tests.helpers.project import REPO, set_params
from tests.helpers.shards import prepare_folder

CLASSES = ["dandelion", "grass"]


def rows(n_per_class: int) -> list[Example]:
    return [
        Example(f"data/{label}/{i:03d}.jpg", label, "") for label in ("dandelion", "grass") for i in range(n_per_class)
    ]


def test_folds_are_stratified_disjoint_balanced_and_seeded() -> None:
    pool = rows(23)
    fold = cv.stratified_folds(pool, 5, seed=42)
    assert sorted(np.unique(fold)) == [0, 1, 2, 3, 4]
    for f in range(5):
        members = [pool[i].label for i in np.flatnonzero(fold == f)]
        assert abs(members.count("dandelion") - members.count("grass")) <= 1
        assert len(members) in (9, 10)
    assert np.array_equal(fold, cv.stratified_folds(list(reversed(pool))[::-1], 5, seed=42))
    assert not np.array_equal(fold, cv.stratified_folds(pool, 5, seed=7))
    with pytest.raises(GreenrError, match="fewer images than the 5 folds"):
        cv.stratified_folds(rows(3), 5, seed=0)


def test_inner_split_is_stratified_and_disjoint() -> None:
    labels = np.array([0] * 40 + [1] * 40)
    idx = np.arange(0, 80, 1)
    train, val = cv.inner_split(labels, idx, 0.2, seed=1)
    assert not set(train) & set(val) and set(train) | set(val) == set(idx)
    assert (labels[val] == 0).sum() == (labels[val] == 1).sum() == 8


def test_overrides_make_one_setting_per_combination() -> None:
    settings = cv.parse_overrides(["model.arch=resnet18,efficientnet_lite0", "train.lr=0.01"])
    assert settings == [
        {"model.arch": "resnet18", "train.lr": 0.01},
        {"model.arch": "efficientnet_lite0", "train.lr": 0.01},
    ]
    assert cv.parse_overrides([]) == [{}]
    with pytest.raises(GreenrError, match="only model and train"):
        cv.parse_overrides(["evaluate.seed=1"])
    with pytest.raises(GreenrError, match="train.lerning_rate"):
        cv.load_sections(cv.apply({}, {"train.lerning_rate": 1.0}), "x")


@pytest.fixture
def project(tmp_path: Path, make_dataset, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Generated images, prepared into train/val/test shards; the test shards are then made unreadable."""
    root = tmp_path / "project"
    make_dataset(root / "data", per_class=12, size=40)
    (root / "dvc.yaml").write_text("stages: {}\n")
    (root / "params.yaml").write_text((REPO / "params.yaml").read_text())
    set_params(root, {"train": {"epochs": 3, "batch_size": 8, "feature_views": 1, "num_threads": 2}})
    write_classes(root / CLASSES_FILE, CLASSES)
    prepare_folder(root, CLASSES, 64, {"train": 0.66, "val": 0.17, "test": 0.17})
    for shard in (root / SHARDS_DIR / "test").glob("*.tar"):  # CV must never read a test image
        shard.write_bytes(b"")
    monkeypatch.setenv("GREENR_ROOT", str(root))
    monkeypatch.chdir(root)
    return root


def test_cv_scores_each_setting_on_out_of_fold_predictions(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from greenr.model import recipe

    extractions = []
    real_extract = recipe.frozen_features
    monkeypatch.setattr(recipe, "frozen_features", lambda *a, **k: extractions.append(1) or real_extract(*a, **k))
    sets = ["model.arch=efficientnet_lite0", "model.image_size=64", "train.lr=0.003,0.03", "train.finetune=frozen"]
    results, pool = cv.cross_validate(sets, folds=4, seed=0, threads=2, progress=False)
    assert len(extractions) == 1, "settings that differ only in the head's lr share one feature extraction"
    test_images = {m.path for m in read_index(project / SHARDS_DIR / "test")}
    assert len(pool) == 20 and test_images and not test_images & {row.path for row in pool}
    assert [r.name for r in results] == [
        "model.arch=efficientnet_lite0 model.image_size=64 train.lr=0.003 train.finetune=frozen",
        "model.arch=efficientnet_lite0 model.image_size=64 train.lr=0.03 train.finetune=frozen",
    ]
    for result in results:
        m = result.metrics
        assert m["n"] == 20 and len(result.fold_accuracy) == 4 and len(result.temperatures) == 4
        assert m["accuracy_interval"][0] <= m["accuracy"] <= m["accuracy_interval"][1]
        assert 0 <= m["ece"] <= 1 and m["log_loss"] >= 0
        # train.precision auto: bf16 autocast where the CPU computes it natively (the table says which)
        precision = "bf16" if native_bf16() else "fp32"
        assert result.resolved == {"finetune": "frozen", "pretrained": True, "device": "cpu", "precision": precision}
    json_path, md_path = cv.write(results, Path("reports/cv/test"), 4, 0, len(pool))
    saved = json.loads(json_path.read_text())
    assert set(saved["settings"]) == {r.name for r in results}
    assert saved["settings"][results[0].name]["accuracy"] == results[0].metrics["accuracy"]
    assert saved["machine"] == {"cpu": cpu_model(), "cpus": available_cpus()}
    assert md_path.read_text().count("\n| model.arch=") == 2
