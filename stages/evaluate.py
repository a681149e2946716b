"""Stage `evaluate`: the trained model on the held-out test split.

Reads params `evaluate.*` and the test split's shards. Writes metrics/evaluate.json (committed, for
`dvc metrics diff`), plots/evaluate/confusion.csv and reliability.csv, and per class
plots/evaluate/{roc,prc}/<class>.csv (declared as plots), and logs them to MLflow in the run that
trained the checkpoint. Any number of classes: per-class figures are keyed by the class's name.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from greenr.atomic import write_csv, write_json
from greenr.backends.base import Backend
from greenr.backends.model_file import load_model_file
from greenr.backends.torch_backend import TorchBackend
from greenr.data.loader import Samples, batches, load_samples
from greenr.errors import exits_cleanly, setup_logging
from greenr.evaluation.metrics import (
    bootstrap_intervals,
    classification_metrics,
    curves,
    expected_calibration_error,
    positive_index,
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
)

log = logging.getLogger("stages.evaluate")


def predict(backend: Backend, test_set: Samples, batch_size: int) -> np.ndarray:
    """The probabilities (N, C) of `backend` on every test image, streamed from the shards."""
    probs = np.zeros((len(test_set), len(backend.spec.classes)))
    for batch in batches(test_set, backend.spec.preprocessing.image_size, batch_size):
        probs[batch.index.numpy()] = backend.predict_proba(batch.images.numpy(), batch_size)
    return probs


def score(probs: np.ndarray, labels: np.ndarray, backend: Backend, params: EvaluateParams) -> dict:
    """The metrics report of `probs` against `labels`."""
    classes = backend.spec.classes
    report = classification_metrics(labels, probs, classes, positive_index(classes, params.positive_class))
    # Of the calibrated probabilities (the checkpoint's temperature), as /predict answers them.
    report["ece"] = expected_calibration_error(labels, probs)
    report["temperature"] = backend.spec.temperature
    report["bootstrap"] = bootstrap_intervals(labels, probs, params.bootstrap_samples, params.confidence, params.seed)
    return report


def write_curves(folder: Path, per_class: dict[str, list[dict]], fields: list[str]) -> None:
    """One CSV per class in `folder`; files of classes no longer shown are removed."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in per_class.items():
        write_csv(folder / f"{name}.csv", rows, fields)
    for stale in folder.glob("*.csv"):
        if stale.stem not in per_class:
            stale.unlink()


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
    test_set = load_samples(root, ["test"], ckpt.spec.classes)
    probs = predict(backend, test_set, params.batch_size)
    labels = test_set.labels
    report = score(probs, labels, backend, params)
    write_json(root / EVALUATE_METRICS, report)
    names = ckpt.spec.classes
    write_csv(
        root / CONFUSION_PLOT,
        sorted(
            (
                {"path": p, "actual": names[a], "predicted": names[b]}
                for p, a, b in zip(test_set.paths, labels, probs.argmax(1))
            ),
            key=lambda row: row["path"],
        ),
        ["path", "actual", "predicted"],
    )
    lines = curves(labels, probs, names, positive_index(names, params.positive_class))
    write_curves(root / ROC_PLOT, {name: c["roc"] for name, c in lines.items()}, ["fpr", "tpr", "threshold"])
    write_curves(root / PRC_PLOT, {name: c["prc"] for name, c in lines.items()}, ["recall", "precision", "threshold"])
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
        "test accuracy %.4f, macro F1 %.4f, ROC AUC %s on %d images of %d classes",
        report["accuracy"],
        report["macro"]["f1"],
        report["roc_auc"],
        report["n"],
        len(names),
    )


if __name__ == "__main__":
    main()
