"""Stage `evaluate`: the trained model on the held-out test split.

Reads params `evaluate.*`. Writes metrics/evaluate.json (committed, for `dvc metrics diff`)
and plots/evaluate/{confusion,roc,prc}.csv (declared under `plots:`), and logs them to MLflow
in the run that trained the checkpoint.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

from greenr.atomic import atomic_open, write_json
from greenr.data.dataset import read_manifest
from greenr.data.tensors import load_tensors
from greenr.errors import GreenrError, exits_cleanly, setup_logging
from greenr.evaluation.metrics import bootstrap_intervals, classification_metrics, curves
from greenr.model import checkpoint
from greenr.model.device import configure_threads
from greenr.model.inference import predict_proba
from greenr.ops import tracking
from greenr.params import load_section
from greenr.paths import (
    CONFUSION_PLOT,
    EVALUATE_METRICS,
    EVALUATE_PLOTS_DIR,
    MODEL_PATH,
    PRC_PLOT,
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


@exits_cleanly
def main() -> None:
    setup_logging()
    params = load_section("evaluate")
    root = repo_root()
    configure_threads(0)
    ckpt = checkpoint.load(root / MODEL_PATH)
    if params.positive_class not in ckpt.classes:
        raise GreenrError(
            f"evaluate.positive_class {params.positive_class!r} is not one of {ckpt.classes}",
            "set it to one of the model's classes",
        )
    positive = ckpt.classes.index(params.positive_class)
    test_set = load_tensors(read_manifest(root / split_manifest("test")), root, ckpt.preprocessing, ckpt.classes)
    model = ckpt.build("cpu")
    probs = predict_proba(model, test_set.images, ckpt.preprocessing, "cpu", params.batch_size).numpy()
    labels = test_set.labels.numpy()

    report = classification_metrics(labels, probs, ckpt.classes, positive)
    report["bootstrap"] = bootstrap_intervals(labels, probs, params.bootstrap_samples, params.confidence, params.seed)
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

    with tracking.start_run("evaluate", checkpoint_sha256=ckpt.sha256):
        flat = {
            "test_accuracy": report["accuracy"],
            "test_log_loss": report["log_loss"],
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
