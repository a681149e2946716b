"""End to end with a user's own class folders: three classes nobody wrote into the code, from
`DATA_SOURCE=DIR greenr run` in a fresh project to the served model and `greenr predict`."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from greenr.processes import free_port
from tests.helpers.images import class_image, jpeg_bytes
from tests.helpers.project import (
    REPO,
    alarming_lines,
    commit_all,
    copy_project,
    point_remote_at,
    project_env,
    run,
    set_params,
)
from tests.helpers.serving import Server

pytestmark = pytest.mark.e2e

CLASSES = ["meadow", "sky", "sunflower"]  # sorted: the order the split stage finds them in
PER_CLASS = 16
PARAMS = {
    "model": {"image_size": 64},
    "train": {"epochs": 10, "feature_views": 1},
    "evaluate": {"bootstrap_samples": 50},
}


def sky(seed: int, size: int = 64) -> Image.Image:
    """Blue gradient with pale cloud blobs: a third texture the frozen backbone tells apart."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    image = np.zeros((size, size, 3))
    image[..., 0] = 60 + 80 * yy
    image[..., 1] = 110 + 70 * yy
    image[..., 2] = 200 + 40 * yy
    for _ in range(rng.integers(1, 4)):
        cy, cx, radius = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.25)
        cloud = (yy - cy) ** 2 + ((xx - cx) / 1.8) ** 2 < radius**2
        image[cloud] = (235, 235, 240)
    image += rng.normal(0, 6, image.shape)
    return Image.fromarray(image.clip(0, 255).astype(np.uint8), mode="RGB")


def photo(label: str, seed: int) -> bytes:
    if label == "sky":
        return jpeg_bytes(sky(seed))
    # class_image's two textures: green noise ("grass") and yellow blobs on green ("dandelion")
    return jpeg_bytes(class_image("grass" if label == "meadow" else "dandelion", seed, size=64))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("classes")
    source, project, state = root / "source", root / "project", root / "state"
    for label in CLASSES:
        for i in range(PER_CLASS):
            # nested folders under a class folder are fine: the class is the top folder
            target = source / label / ("batch-2" if i % 2 else "batch-1") / f"{label}-{i:03d}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(photo(label, 1000 * CLASSES.index(label) + i))
    (source / "sky" / "notes.txt").write_text("not an image: left out")
    copy_project(project)
    # As in a fresh clone: data.dvc names the default data, which this (new) remote does not hold.
    shutil.copy2(REPO / "data.dvc", project / "data.dvc")
    set_params(project, PARAMS)
    env = project_env(project, state) | {"DATA_SOURCE": str(source)}
    commit_all(project)
    point_remote_at(project, env, free_port())
    main_job = run(["greenr", "run"], project, env)
    yield project, env, source, main_job
    run(["greenr", "store", "stop"], project, env, check=False)


def test_a_first_run_on_a_new_remote_prints_no_error_or_warning(trained) -> None:
    """The expected first run (no data/ yet, an empty remote): nothing a user should worry about."""
    _, _, _, main_job = trained
    assert alarming_lines(main_job) == [], main_job.stderr[-4000:]
    assert "does not have this data version (a new remote): ingesting" in main_job.stderr
    assert "has none of the pipeline's outputs yet" in main_job.stderr


def test_the_classes_come_from_the_folders_through_every_step(trained) -> None:
    project, _, _, main_job = trained
    assert json.loads((project / "splits" / "classes.json").read_text()) == {"classes": CLASSES}
    report = json.loads((project / "metrics" / "evaluate.json").read_text())
    assert list(report["per_class"]) == CLASSES
    assert set(report["confusion_matrix"]) == set(CLASSES)
    assert report["accuracy"] >= 0.8, report
    assert report["roc_auc"] is not None  # macro one-vs-rest
    assert sorted(p.name for p in (project / "plots" / "evaluate" / "roc").iterdir()) == [f"{c}.csv" for c in CLASSES]
    assert "sunflower" in main_job.stdout  # the printed metrics name the classes
    index = (project / "shards" / "train" / "index.csv").read_text()
    assert all(f",{label}," in index for label in CLASSES)


def test_the_served_model_answers_with_the_folders_classes(trained, tmp_path: Path) -> None:
    project, env, source, _ = trained
    server = Server({"MODEL_PATH": str(project / "models" / "stage-1.onnx")}, tmp_path / "server.log")
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=30) as http:
            assert http.get("/model").json()["classes"] == CLASSES
            right = 0
            for label in CLASSES:
                answer = http.post("/predict", files={"file": ("x.jpg", photo(label, 99_000), "image/jpeg")})
                assert answer.status_code == 200, answer.text
                body = answer.json()
                assert set(body["probabilities"]) == set(CLASSES)
                right += body["prediction"] == label
            assert right >= 2
            metrics = http.get("/metrics").text
            assert all(f'greenr_predictions_total{{label="{c}"}}' in metrics for c in CLASSES)
    finally:
        server.stop()

    out = tmp_path / "predictions.csv"
    run(
        ["greenr", "predict", str(source), "--model", str(project / "models" / "stage-1.onnx"), "--out", str(out)],
        project,
        env,
    )
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(CLASSES) * PER_CLASS
    assert {f"p_{c}" for c in CLASSES} <= set(rows[0])
    right = sum(row["prediction"] == Path(row["path"]).relative_to(source).parts[0] for row in rows)
    assert right / len(rows) >= 0.8
