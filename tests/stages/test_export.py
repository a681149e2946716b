"""Stage `export`: the ONNX model and its parity report; evaluate's metrics through ONNX equal torch's."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from greenr.backends.base import Backend
from greenr.backends.loading import build, open_backend
from greenr.backends.model_file import load_model_file
from greenr.backends.quantize import with_quantization
from greenr.data.dataset import read_manifest
from greenr.data.loader import load_samples
from greenr.params import ExportParams, load_section
from stages.evaluate import predict, score
from stages.export import int8_failure
from tests.helpers.images import make_images
from tests.helpers.project import TINY_PARAMS, copy_project, project_env, run, set_params
from tests.helpers.serving import write_checkpoint


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project copy with data, splits and an (untrained) checkpoint at the params' image size."""
    root = copy_project(tmp_path_factory.mktemp("export") / "p")
    for label in ("dandelion", "grass"):
        make_images(root / "data" / label, label, 12, 40)
    # An untrained model's labels sit near ties: the INT8 gate on labels is left to the real model.
    set_params(root, {**TINY_PARAMS, "export": {"max_label_changes": 1.0, "calibration_images": 20}})
    env = project_env(root, root.parent / "state")
    run([sys.executable, "-m", "stages.split"], root, env)
    run([sys.executable, "-m", "stages.prepare"], root, env)
    write_checkpoint(root / "models" / "stage-1.pth", seed=3, image_size=TINY_PARAMS["model"]["image_size"])
    return root


def test_export_writes_the_onnx_model_and_its_parity_on_the_test_split(project: Path) -> None:
    result = run([sys.executable, "-m", "stages.export"], project, project_env(project, project.parent / "state"))
    onnx_path = project / "models" / "stage-1.onnx"
    report = json.loads((project / "metrics" / "export.json").read_text())
    test_rows = read_manifest(project / "splits" / "test.csv")
    assert report["test_images"] == len(test_rows) > 0
    assert report["onnx_sha256"] == hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    checkpoint = load_model_file(project / "models" / "stage-1.pth")
    assert report["checkpoint_sha256"] == checkpoint.sha256
    assert {"onnxruntime_fp32", "openvino_fp32"} <= set(report["parity"])
    for name, parity in report["parity"].items():
        assert parity["agrees"] and parity["label_agreement"] == 1.0, name
        assert parity["max_abs_logit_diff"] <= parity["tolerance"], name
    exported = load_model_file(onnx_path)
    assert exported.spec.checkpoint_sha256 == checkpoint.sha256
    assert exported.spec.classes == checkpoint.spec.classes
    assert "wrote models/stage-1.onnx" in result.stderr
    # The INT8 model beside it: calibrated on training images, checked per backend on the test split.
    int8 = report["int8"]
    int8_file = load_model_file(project / "models" / "stage-1.int8.onnx")
    train_rows = read_manifest(project / "splits" / "train.csv")
    assert int8["enabled"] and int8["sha256"] == int8_file.sha256
    assert int8["calibration_images"] == min(20, len(train_rows))
    assert int8_file.spec.checkpoint_sha256 == checkpoint.sha256
    assert set(int8["parity"]) == {"onnxruntime", "openvino"}
    assert int8["backends"] == [name for name, result in int8["parity"].items() if result["passes"]]
    assert int8_file.spec.quantization["backends"] == int8["backends"] != []
    for result in int8["parity"].values():
        assert 0 <= result["label_agreement"] <= 1 and result["max_abs_prob_diff"] >= 0
        lo, hi = int8["reference_accuracy_interval"]
        assert result["passes"] == (lo <= result["accuracy"] <= hi)


def test_evaluate_through_the_onnx_backends_gives_the_torch_reference_labels(project: Path) -> None:
    if not (project / "models" / "stage-1.onnx").is_file():
        run([sys.executable, "-m", "stages.export"], project, project_env(project, project.parent / "state"))
    checkpoint = load_model_file(project / "models" / "stage-1.pth")
    exported = load_model_file(project / "models" / "stage-1.onnx")
    params = load_section("evaluate", project / "params.yaml")
    test_set = load_samples(project, ["test"], checkpoint.spec.classes)

    def scored(backend: Backend) -> tuple[dict, np.ndarray]:
        probs = predict(backend, test_set, params.batch_size)
        return score(probs, test_set.labels, backend, params), probs

    reference, reference_probs = scored(build("torch", checkpoint, "fp32", 2))
    for name in ("onnxruntime", "openvino"):
        report, probs = scored(build(name, exported, "fp32", 2))
        assert np.array_equal(probs.argmax(1), reference_probs.argmax(1)), name
        assert report["confusion_matrix"] == reference["confusion_matrix"], name
        assert report["accuracy"] == reference["accuracy"] and report["macro"] == reference["macro"], name
        assert report["log_loss"] == pytest.approx(reference["log_loss"], abs=1e-5), name


def test_int8_switched_off_writes_an_empty_int8_output_that_is_never_offered(tmp_path: Path) -> None:
    root = copy_project(tmp_path / "p")
    for label in ("dandelion", "grass"):
        make_images(root / "data" / label, label, 6, 40)
    set_params(root, {**TINY_PARAMS, "export": {"int8": False}})
    env = project_env(root, tmp_path / "state")
    run([sys.executable, "-m", "stages.split"], root, env)
    run([sys.executable, "-m", "stages.prepare"], root, env)
    write_checkpoint(root / "models" / "stage-1.pth", seed=3, image_size=TINY_PARAMS["model"]["image_size"])
    run([sys.executable, "-m", "stages.export"], root, env)
    assert json.loads((root / "metrics" / "export.json").read_text())["int8"] == {"enabled": False}
    assert (root / "models" / "stage-1.int8.onnx").read_bytes() == b""
    _, selection = open_backend(root / "models" / "stage-1.onnx", "auto", "auto", threads=1)
    int8 = [c for c in selection.candidates if c.precision == "int8"]
    assert int8 and all("switched off" in c.status for c in int8)


def test_export_without_a_checkpoint_fails_cleanly(tmp_path: Path) -> None:
    root = copy_project(tmp_path / "p")
    result = run([sys.executable, "-m", "stages.export"], root, project_env(root, tmp_path / "state"), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "stage-1.pth does not exist" in result.stderr and "dvc repro" in result.stderr
    assert not (root / "models" / "stage-1.onnx").exists()


@pytest.mark.parametrize(
    ("setting", "passed", "fails"),
    [("auto", [], False), ("auto", ["openvino"], False), (True, [], True), (True, ["onnxruntime"], False)],
)
def test_only_a_required_int8_model_fails_the_stage_when_no_backend_keeps_the_answers(
    setting: str | bool, passed: list[str], fails: bool
) -> None:
    """`auto` ships an INT8 model that passed nowhere, offered nowhere (the loader's "not certified");
    `true` makes one backend passing a requirement."""
    failure = int8_failure(passed, ExportParams(int8=setting, max_label_changes=0.01))
    assert (failure is not None) == fails
    if failure:
        assert "every backend" in failure and "1%" in failure and "metrics/export.json" in failure


def test_an_int8_model_certified_nowhere_is_never_offered(project: Path, tmp_path: Path) -> None:
    """What `auto` ships when no backend passed: a model listing no backend, which the loader refuses."""
    if not (project / "models" / "stage-1.int8.onnx").is_file():
        run([sys.executable, "-m", "stages.export"], project, project_env(project, project.parent / "state"))
    certified = load_model_file(project / "models" / "stage-1.int8.onnx")
    root = tmp_path / "models"
    root.mkdir()
    (root / "stage-1.onnx").write_bytes((project / "models" / "stage-1.onnx").read_bytes())
    (root / "stage-1.int8.onnx").write_bytes(
        with_quantization(certified.data, "stage-1.int8.onnx", {**certified.spec.quantization, "backends": []})
    )
    _, selection = open_backend(root / "stage-1.onnx", "auto", "auto", threads=1)
    int8 = [c for c in selection.candidates if c.precision == "int8"]
    assert int8 and all("not certified" in c.status for c in int8), selection.describe()
    assert selection.backend.precision != "int8"
