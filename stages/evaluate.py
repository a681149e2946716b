"""Stage `evaluate`: the trained model on the held-out test split.

Reads params `evaluate.*`. Writes metrics/evaluate.json (committed, for `dvc metrics diff`)
and plots/evaluate/{confusion,roc,prc,reliability}.csv (declared under `plots:`), and logs them to MLflow
in the run that trained the checkpoint.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import numpy as np

from greenr.atomic import atomic_open, write_json
from greenr.backends.base import Backend
from greenr.backends.model_file import load_model_file
from greenr.backends.torch_backend import TorchBackend
from greenr.data.dataset import read_manifest
from greenr.data.tensors import TensorDataset, load_tensors
from greenr.errors import GreenrError, exits_cleanly, setup_logging
from greenr.evaluation.metrics import (
    bootstrap_intervals,
    classification_metrics,
    curves,
    expected_calibration_error,
    reliability_bins,
)
from greenr.model.device import configure_threads
from greenr.ops import tracking
from greenr.params import EvaluateParams, load_section
from greenr.paths import (
    CONFUSION_PLOT,
    EVALUATE_METRICS,
    EVALUATE_PLOTS_DIR,
    MODEL_PATH,
    PRC_PLOT,
    RELIABILITY_PLOT,
    ROC_PLOT,
    repo_root,
    split_manifest,
)

log = logging.getLogger("stages.evaluate")


def write_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(buffer.getvalue())


def score(backend: Backend, test_set: TensorDataset, params: EvaluateParams) -> tuple[dict, np.ndarray]:
    """The metrics report and the probabilities (N, C) of `backend` on the test split."""
    classes = backend.spec.classes
    if params.positive_class not in classes:
        raise GreenrError(
            f"evaluate.positive_class {params.positive_class!r} is not one of {classes}",
            "set it to one of the model's classes",
        )
    positive = classes.index(params.positive_class)
    probs = backend.predict_proba(test_set.images.numpy(), params.batch_size)
    labels = test_set.labels.numpy()
    report = classification_metrics(labels, probs, classes, positive)
    # Of the calibrated probabilities (the checkpoint's temperature), as /predict answers them.
    report["ece"] = expected_calibration_error(labels, probs)
    report["temperature"] = backend.spec.temperature
    report["bootstrap"] = bootstrap_intervals(labels, probs, params.bootstrap_samples, params.confidence, params.seed)
    return report, probs


@exits_cleanly
def main() -> None:
    setup_logging()
    params = load_section("evaluate")
    root = repo_root()
    threads = configure_threads(0)
    model = load_model_file(root / MODEL_PATH)
    ckpt = model.checkpoint
    # The reference backend: the code the model was trained with (the export stage checks the
    # ONNX backends against it).
    backend = TorchBackend(model, "fp32", threads)
    test_set = load_tensors(read_manifest(root / split_manifest("test")), root, ckpt.preprocessing, ckpt.classes)
    report, probs = score(backend, test_set, params)
    labels = test_set.labels.numpy()
    positive = ckpt.classes.index(params.positive_class)
    write_json(root / EVALUATE_METRICS, report)
    names = ckpt.classes
    write_csv(
        root / CONFUSION_PLOT,
        [
            {"path": p, "actual": names[a], "predicted": names[b]}
            for p, a, b in zip(test_set.paths, labels, probs.argmax(1))
        ],
        ["path", "actual", "predicted"],
    )
    lines = curves(labels, probs, positive)
    write_csv(root / ROC_PLOT, lines["roc"], ["fpr", "tpr", "threshold"])
    write_csv(root / PRC_PLOT, lines["prc"], ["recall", "precision", "threshold"])
    write_csv(
        root / RELIABILITY_PLOT,
        reliability_bins(labels, probs),
        ["bin_low", "bin_high", "confidence", "accuracy", "count"],
    )

    with tracking.start_run("evaluate", checkpoint_sha256=ckpt.sha256):
        flat = {
            "test_accuracy": report["accuracy"],
            "test_log_loss": report["log_loss"],
            "test_ece": report["ece"],
            "test_macro_f1": report["macro"]["f1"],
            "test_macro_precision": report["macro"]["precision"],
            "test_macro_recall": report["macro"]["recall"],
        }
        if report["roc_auc"] is not None:
            flat["test_roc_auc"] = report["roc_auc"]
        tracking.mlflow.log_metrics(flat)
        tracking.mlflow.log_artifact(str(root / EVALUATE_METRICS), "evaluate")
        tracking.mlflow.log_artifacts(str(root / EVALUATE_PLOTS_DIR), "evaluate/plots")
    log.info(
        "test accuracy %.4f, macro F1 %.4f, ROC AUC %s on %d images",
        report["accuracy"],
        report["macro"]["f1"],
        report["roc_auc"],
        report["n"],
    )


if __name__ == "__main__":
    main()
