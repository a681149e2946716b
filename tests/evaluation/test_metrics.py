"""Test metrics against sklearn on a hand example; bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from greenr.evaluation.metrics import bootstrap_intervals, classification_metrics, curves

CLASSES = ["dandelion", "grass"]
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
P0 = np.array([0.9, 0.8, 0.4, 0.7, 0.2, 0.1, 0.6, 0.3, 0.05, 0.45])  # P(dandelion)
PROBS = np.stack([P0, 1 - P0], axis=1)


def test_metrics_match_sklearn_and_a_hand_count():
    out = classification_metrics(LABELS, PROBS, CLASSES, positive=0)
    # predicted dandelion: indices 0, 1, 3, 6 -> 3 right, 1 wrong; 1 dandelion missed (index 2)
    assert out["confusion_matrix"] == [[3, 1], [1, 5]]
    assert out["accuracy"] == pytest.approx(0.8)
    assert out["per_class"]["dandelion"] == {"precision": 0.75, "recall": 0.75, "f1": 0.75, "support": 4}
    grass_p, grass_r = 5 / 6, 5 / 6
    assert out["per_class"]["grass"]["precision"] == pytest.approx(grass_p, abs=1e-6)
    assert out["macro"]["f1"] == pytest.approx(skm.f1_score(LABELS, PROBS.argmax(1), average="macro"), abs=1e-6)
    assert out["macro"]["recall"] == pytest.approx((0.75 + grass_r) / 2, abs=1e-6)
    assert out["roc_auc"] == pytest.approx(skm.roc_auc_score(LABELS == 0, P0), abs=1e-6)
    assert out["log_loss"] == pytest.approx(skm.log_loss(LABELS, PROBS), abs=1e-6)
    assert out["n"] == 10


def test_single_class_test_set_has_no_auc():
    out = classification_metrics(np.zeros(3, dtype=int), PROBS[:3], CLASSES, positive=0)
    assert out["roc_auc"] is None


def test_bootstrap_contains_the_point_estimate_and_is_deterministic_per_seed():
    first = bootstrap_intervals(LABELS, PROBS, samples=500, confidence=0.9, seed=3)
    point = classification_metrics(LABELS, PROBS, CLASSES, positive=0)
    low, high = first["accuracy"]
    assert low <= point["accuracy"] <= high and low < high
    f1_low, f1_high = first["macro_f1"]
    assert f1_low <= point["macro"]["f1"] <= f1_high
    assert bootstrap_intervals(LABELS, PROBS, samples=500, confidence=0.9, seed=3) == first
    assert bootstrap_intervals(LABELS, PROBS, samples=500, confidence=0.9, seed=4) != first
    assert bootstrap_intervals(LABELS, PROBS, samples=0, confidence=0.9, seed=3) == {}


def test_curves_match_sklearn():
    out = curves(LABELS, PROBS, positive=0)
    fpr, tpr, _ = skm.roc_curve(LABELS == 0, P0)
    assert [p["fpr"] for p in out["roc"]] == pytest.approx(fpr.tolist())
    assert [p["tpr"] for p in out["roc"]] == pytest.approx(tpr.tolist())
    assert all(0 <= p["precision"] <= 1 for p in out["prc"])
