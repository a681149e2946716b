"""Test-set metrics, curves and bootstrap intervals from predicted probabilities."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn import metrics as skm


def _r(value: float) -> float:
    """Rounded so that reruns produce byte-identical metrics files."""
    return round(float(value), 6)


def classification_metrics(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str], positive: int) -> dict:
    """Accuracy, per-class and macro P/R/F1, ROC AUC, log loss and the confusion matrix."""
    preds = probs.argmax(axis=1)
    idx = list(range(len(classes)))
    p, r, f, support = skm.precision_recall_fscore_support(labels, preds, labels=idx, zero_division=0)
    both = len(np.unique(labels)) > 1
    out = {
        "accuracy": _r(skm.accuracy_score(labels, preds)),
        "macro": {"precision": _r(p.mean()), "recall": _r(r.mean()), "f1": _r(f.mean())},
        "per_class": {
            name: {"precision": _r(p[i]), "recall": _r(r[i]), "f1": _r(f[i]), "support": int(support[i])}
            for i, name in enumerate(classes)
        },
        "roc_auc": _r(skm.roc_auc_score(labels == positive, probs[:, positive])) if both else None,
        "log_loss": _r(skm.log_loss(labels, np.clip(probs, 1e-7, 1), labels=idx)),
        "confusion_matrix": skm.confusion_matrix(labels, preds, labels=idx).tolist(),
        "n": len(labels),
    }
    return out


def bootstrap_intervals(labels: np.ndarray, probs: np.ndarray, samples: int, confidence: float, seed: int) -> dict:
    """Percentile bootstrap intervals for accuracy and macro F1 (resampling test images)."""
    if samples == 0 or len(labels) == 0:
        return {}
    rng = np.random.default_rng(seed)
    preds = probs.argmax(axis=1)
    n = len(labels)
    picks = rng.integers(0, n, (samples, n))
    y, p = labels[picks], preds[picks]
    accs = (y == p).mean(axis=1)
    f1_per_class = []
    for c in range(probs.shape[1]):
        tp = ((p == c) & (y == c)).sum(axis=1)
        fp = ((p == c) & (y != c)).sum(axis=1)
        fn = ((p != c) & (y == c)).sum(axis=1)
        denom = 2 * tp + fp + fn
        f1_per_class.append(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0))
    f1s = np.mean(f1_per_class, axis=0)
    lo, hi = (1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100
    return {
        "confidence": confidence,
        "samples": samples,
        "accuracy": [_r(np.percentile(accs, lo)), _r(np.percentile(accs, hi))],
        "macro_f1": [_r(np.percentile(f1s, lo)), _r(np.percentile(f1s, hi))],
    }


def curves(labels: np.ndarray, probs: np.ndarray, positive: int) -> dict[str, list[dict]]:
    """ROC and precision-recall curve points for the positive class, for DVC plots."""
    truth = labels == positive
    if len(np.unique(truth)) < 2:
        return {"roc": [], "prc": []}
    fpr, tpr, roc_thr = skm.roc_curve(truth, probs[:, positive])
    precision, recall, prc_thr = skm.precision_recall_curve(truth, probs[:, positive])
    roc = [{"fpr": _r(a), "tpr": _r(b), "threshold": _r(min(c, 1.0))} for a, b, c in zip(fpr, tpr, roc_thr)]
    prc = [
        {"recall": _r(a), "precision": _r(b), "threshold": _r(c)}
        for a, b, c in zip(recall[:-1], precision[:-1], prc_thr)
    ]
    return {"roc": roc, "prc": prc}
