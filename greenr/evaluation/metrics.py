"""Test-set metrics, curves and bootstrap intervals from predicted probabilities."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn import metrics as skm

from greenr import scm
from greenr.errors import GreenrError
from greenr.paths import EVALUATE_METRICS


def _r(value: float) -> float:
    """Rounded so that reruns produce byte-identical metrics files."""
    return round(float(value), 6)


def positive_index(classes: Sequence[str], name: str | None) -> int:
    """The index of `evaluate.positive_class` (None: the first class); GreenrError when it is not a class."""
    if name is None:
        return 0
    if name not in classes:
        raise GreenrError(
            f"evaluate.positive_class {name!r} is not one of the classes {list(classes)}",
            "set it to one of them in params.yaml, or to null (the first class)",
        )
    return list(classes).index(name)


def roc_auc(labels: np.ndarray, probs: np.ndarray, positive: int) -> float | None:
    """ROC AUC: of `positive` against the other class for 2 classes, else the macro mean of every
    class against the rest; None when a class the average needs has no test image."""
    n_classes = probs.shape[1]
    if n_classes == 2:
        truth = labels == positive
        return _r(skm.roc_auc_score(truth, probs[:, positive])) if 0 < truth.sum() < len(truth) else None
    if len(np.unique(labels)) < n_classes:
        return None
    return _r(skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro", labels=list(range(n_classes))))


def _rows_summing_to_one(probs: np.ndarray) -> np.ndarray:
    """float64 probabilities renormalised: a bf16 backend's softmax rows sum to 1 only within
    ~1e-3, and log loss (sklearn warns) needs them exact."""
    rows = np.asarray(probs, dtype=np.float64)
    return rows / rows.sum(axis=1, keepdims=True)


def classification_metrics(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str], positive: int) -> dict:
    """Accuracy, per-class and macro P/R/F1, ROC AUC, log loss and the confusion matrix, for any
    number of classes. Everything per class is keyed by the class's name (the confusion matrix as
    actual -> predicted -> count), so `dvc metrics diff` keys stay put when a class is added."""
    preds = probs.argmax(axis=1)
    idx = list(range(len(classes)))
    p, r, f, support = skm.precision_recall_fscore_support(labels, preds, labels=idx, zero_division=0)
    confusion = skm.confusion_matrix(labels, preds, labels=idx)
    out = {
        "accuracy": _r(skm.accuracy_score(labels, preds)),
        "macro": {"precision": _r(p.mean()), "recall": _r(r.mean()), "f1": _r(f.mean())},
        "per_class": {
            name: {"precision": _r(p[i]), "recall": _r(r[i]), "f1": _r(f[i]), "support": int(support[i])}
            for i, name in enumerate(classes)
        },
        "roc_auc": roc_auc(labels, probs, positive),
        "log_loss": _r(skm.log_loss(labels, _rows_summing_to_one(probs), labels=idx)),
        "confusion_matrix": {
            actual: {predicted: int(confusion[i, j]) for j, predicted in enumerate(classes)}
            for i, actual in enumerate(classes)
        },
        "n": len(labels),
    }
    return out


# Resampled picks held at once: 32 MiB of positions, whatever the test split's size.
BOOTSTRAP_CELLS = 1 << 22


def bootstrap_intervals(
    labels: np.ndarray, probs: np.ndarray, samples: int, confidence: float, seed: int, max_cells: int = BOOTSTRAP_CELLS
) -> dict:
    """Percentile bootstrap intervals for accuracy and macro F1 (resampling test images).

    The resamples are drawn a block of rows at a time (about `max_cells` picks), so memory does not
    grow with samples x images; the generator's stream is the same for any block size, and so are
    the intervals."""
    if samples == 0 or len(labels) == 0:
        return {}
    rng = np.random.default_rng(seed)
    preds = probs.argmax(axis=1)
    n, k = len(labels), probs.shape[1]
    rows = max(1, max_cells // n)
    accs, f1s = [], []
    for start in range(0, samples, rows):
        block = min(rows, samples - start)
        picks = rng.integers(0, n, (block, n))
        y, p = labels[picks], preds[picks]
        accs.append((y == p).mean(axis=1))
        f1s.append(_macro_f1_per_row(y, p, k))
    lo, hi = (1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100
    acc, f1 = np.concatenate(accs), np.concatenate(f1s)
    return {
        "confidence": confidence,
        "samples": samples,
        "accuracy": [_r(np.percentile(acc, lo)), _r(np.percentile(acc, hi))],
        "macro_f1": [_r(np.percentile(f1, lo)), _r(np.percentile(f1, hi))],
    }


def _macro_f1_per_row(y: np.ndarray, p: np.ndarray, classes: int) -> np.ndarray:
    """Macro F1 of each row of (labels, predictions), both (R, n); a class with no label and no
    prediction in a row scores 0. Counted per (class, row) in one pass, whatever the classes."""
    r, n = y.shape
    cell = np.arange(r)[:, None]
    # (class, row) counts; F1 = 2 tp / (2 tp + fp + fn) = 2 tp / (predicted + actual).
    tp = np.bincount((y * r + cell)[y == p], minlength=classes * r).reshape(classes, r)
    predicted = np.bincount((p * r + cell).ravel(), minlength=classes * r).reshape(classes, r)
    actual = np.bincount((y * r + cell).ravel(), minlength=classes * r).reshape(classes, r)
    denom = predicted + actual
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0).mean(axis=0)


# Points per plotted curve: a committed plot file stays a few dozen KB whatever the test split's size.
CURVE_POINTS = 1000


def _thinned(points: list[dict], most: int = CURVE_POINTS) -> list[dict]:
    """`points` itself when there are at most `most`; else `most` of them evenly spaced along the
    curve, its first and last kept (sklearn's curves have a point per distinct score: one per test
    image at scale)."""
    if len(points) <= most:
        return points
    return [points[i] for i in np.unique(np.linspace(0, len(points) - 1, most).round().astype(int))]


def curves(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str], positive: int) -> dict[str, dict[str, list]]:
    """ROC and precision-recall curve points per class name, for DVC plots: the positive class's
    curves for 2 classes, every class against the rest otherwise (a class with no test image, or
    only test images, has none); at most CURVE_POINTS points each."""
    shown = [positive] if len(classes) == 2 else range(len(classes))
    out: dict[str, dict[str, list]] = {}
    for c in shown:
        truth = labels == c
        if len(np.unique(truth)) < 2:
            continue
        fpr, tpr, roc_thr = skm.roc_curve(truth, probs[:, c])
        precision, recall, prc_thr = skm.precision_recall_curve(truth, probs[:, c])
        out[classes[c]] = {
            "roc": _thinned(
                [{"fpr": _r(a), "tpr": _r(b), "threshold": _r(min(t, 1.0))} for a, b, t in zip(fpr, tpr, roc_thr)]
            ),
            "prc": _thinned(
                [
                    {"recall": _r(a), "precision": _r(b), "threshold": _r(t)}
                    for a, b, t in zip(recall[:-1], precision[:-1], prc_thr)
                ]
            ),
        }
    return out


def _bins(labels: np.ndarray, probs: np.ndarray, bins: int) -> list[tuple[float, float, float, float, int]]:
    """(low, high, mean confidence, accuracy, count) of each non-empty equal-width bin of
    top-label confidence."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    out = []
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            out.append((low, high, confidence[inside].mean(), correct[inside].mean(), int(inside.sum())))
    return out


def reliability_bins(labels: np.ndarray, probs: np.ndarray, bins: int = 15) -> list[dict]:
    """The reliability diagram's points: per bin of top-label confidence, its mean confidence, the
    accuracy of the predictions in it, and how many there are (empty bins left out)."""
    return [
        {"bin_low": _r(low), "bin_high": _r(high), "confidence": _r(conf), "accuracy": _r(acc), "count": count}
        for low, high, conf, acc, count in _bins(labels, probs, bins)
    ]


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    """ECE: the count-weighted mean gap between confidence and accuracy over the bins."""
    rows = _bins(labels, probs, bins)
    total = sum(count for *_, count in rows)
    return _r(sum(count * abs(acc - conf) for _, _, conf, acc, count in rows) / total) if total else 0.0


def summary(report: dict) -> str:
    """metrics/evaluate.json as the text `greenr run` and `greenr metrics` print."""
    boot = report.get("bootstrap") or {}
    acc_ci = boot.get("accuracy")
    f1_ci = boot.get("macro_f1")

    def ci(pair: list[float] | None) -> str:
        return f"  [{pair[0]:.3f}, {pair[1]:.3f}]" if pair else ""

    lines = [
        f"Test metrics ({report['n']} images, {EVALUATE_METRICS}):",
        f"  accuracy   {report['accuracy']:.4f}{ci(acc_ci)}",
        f"  macro F1   {report['macro']['f1']:.4f}{ci(f1_ci)}",
        f"  ROC AUC    {report['roc_auc']}",
        f"  log loss   {report['log_loss']:.4f}",
        *([f"  ECE        {report['ece']:.4f}  (calibration error of the confidences)"] if "ece" in report else []),
    ]
    width = max([10, *(len(name) for name in report["per_class"])])
    for name, row in report["per_class"].items():
        lines.append(
            f"  {name:<{width}} precision {row['precision']:.3f} recall {row['recall']:.3f} "
            f"f1 {row['f1']:.3f} (n={row['support']})"
        )
    matrix = report["confusion_matrix"]
    width = max(len(name) for name in matrix)
    lines.append("  confusion matrix (rows actual, columns predicted, in this order):")
    lines += [f"    {actual:<{width}} {' '.join(f'{n:>5}' for n in row.values())}" for actual, row in matrix.items()]
    if boot:
        lines.append(
            f"  intervals: {boot['confidence']:.0%} bootstrap over {boot['samples']} resamples; "
            "small test sets make single numbers noisy"
        )
    return "\n".join(lines)


def read_metrics_at(rev: str, root: Path, path: str = EVALUATE_METRICS) -> dict[str, Any] | None:
    """The metrics file as committed at `rev`; None when that revision has no such file."""
    text = scm.show(rev, path, cwd=root)
    return None if text is None else _parse(text, f"{rev}:{path}")


def read_metrics_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GreenrError(f"{path} does not exist", "run `dvc repro` to evaluate the candidate") from None
    return _parse(text, str(path))


def _parse(text: str, source: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
        float(data["accuracy"]), float(data["macro"]["f1"])
    except (ValueError, KeyError, TypeError):
        raise GreenrError(
            f"{source} is not an evaluate metrics file (needs accuracy and macro.f1)",
            "regenerate it with `dvc repro evaluate`",
        ) from None
    return data
