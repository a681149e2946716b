"""Test metrics against sklearn on a hand example; bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from greenr.errors import GreenrError
from greenr.evaluation.metrics import bootstrap_intervals, classification_metrics, curves, positive_index

CLASSES = ["dandelion", "grass"]
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
P0 = np.array([0.9, 0.8, 0.4, 0.7, 0.2, 0.1, 0.6, 0.3, 0.05, 0.45])  # P(dandelion)
PROBS = np.stack([P0, 1 - P0], axis=1)


def test_metrics_match_sklearn_and_a_hand_count():
    out = classification_metrics(LABELS, PROBS, CLASSES, positive=0)
    # predicted dandelion: indices 0, 1, 3, 6 -> 3 right, 1 wrong; 1 dandelion missed (index 2)
    assert out["confusion_matrix"] == {"dandelion": {"dandelion": 3, "grass": 1}, "grass": {"dandelion": 1, "grass": 5}}
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


def test_bootstrap_in_blocks_is_the_one_block_bootstrap_with_sklearn_scores():
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 5, 97)
    probs = rng.dirichlet(np.ones(5), 97)
    probs[np.arange(97), labels] += 0.3
    whole = bootstrap_intervals(labels, probs, samples=200, confidence=0.9, seed=2, max_cells=10**9)
    # A reference from the whole picks matrix at once, every resample scored by scikit-learn.
    picks = np.random.default_rng(2).integers(0, 97, (200, 97))
    preds = probs.argmax(axis=1)
    accs = [skm.accuracy_score(labels[row], preds[row]) for row in picks]
    f1s = [skm.f1_score(labels[row], preds[row], labels=range(5), average="macro", zero_division=0) for row in picks]
    assert whole["accuracy"] == pytest.approx(np.percentile(accs, [5, 95]).tolist(), abs=1e-6)
    assert whole["macro_f1"] == pytest.approx(np.percentile(f1s, [5, 95]).tolist(), abs=1e-6)
    for cells in (97, 3 * 97 + 1, 64 * 97):  # blocks of 1, 3 and 64 resamples
        assert bootstrap_intervals(labels, probs, samples=200, confidence=0.9, seed=2, max_cells=cells) == whole


def test_bootstrap_memory_does_not_grow_with_samples_times_images():
    import tracemalloc

    n = 50_000  # a test split of a 330,000-image set; the whole picks matrix would be 400 MB, thrice
    labels = np.arange(n) % 3
    probs = np.eye(3)[(labels + (np.arange(n) % 10 == 0)) % 3]
    tracemalloc.start()
    try:
        out = bootstrap_intervals(labels, probs, samples=1000, confidence=0.95, seed=0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert 0.88 < out["accuracy"][0] < 0.9 < out["accuracy"][1] < 0.92
    assert peak < 300 * 2**20, f"{peak / 2**20:.0f} MiB"


def test_curves_match_sklearn():
    out = curves(LABELS, PROBS, CLASSES, positive=0)
    assert list(out) == ["dandelion"]  # two classes: the positive class's curves only
    fpr, tpr, _ = skm.roc_curve(LABELS == 0, P0)
    assert [p["fpr"] for p in out["dandelion"]["roc"]] == pytest.approx(fpr.tolist())
    assert [p["tpr"] for p in out["dandelion"]["roc"]] == pytest.approx(tpr.tolist())
    assert all(0 <= p["precision"] <= 1 for p in out["dandelion"]["prc"])


# Four classes, fixed random probabilities: every figure against scikit-learn.
RNG = np.random.default_rng(5)
N_CLASSES = ["ash", "birch", "cedar", "douglas-fir"]
N_LABELS = np.repeat(np.arange(4), 12)
N_LOGITS = RNG.normal(size=(48, 4)) + 1.5 * np.eye(4)[N_LABELS]
N_PROBS = np.exp(N_LOGITS) / np.exp(N_LOGITS).sum(1, keepdims=True)


def test_n_class_metrics_match_sklearn():
    out = classification_metrics(N_LABELS, N_PROBS, N_CLASSES, positive=0)
    preds = N_PROBS.argmax(1)
    assert out["accuracy"] == pytest.approx(skm.accuracy_score(N_LABELS, preds), abs=1e-6)
    p, r, f, support = skm.precision_recall_fscore_support(N_LABELS, preds, zero_division=0)
    for i, name in enumerate(N_CLASSES):
        assert out["per_class"][name] == pytest.approx(
            {"precision": p[i], "recall": r[i], "f1": f[i], "support": support[i]}, abs=1e-6
        )
    assert out["macro"]["f1"] == pytest.approx(skm.f1_score(N_LABELS, preds, average="macro"), abs=1e-6)
    assert out["roc_auc"] == pytest.approx(
        skm.roc_auc_score(N_LABELS, N_PROBS, multi_class="ovr", average="macro"), abs=1e-6
    )
    assert out["log_loss"] == pytest.approx(skm.log_loss(N_LABELS, N_PROBS), abs=1e-6)
    matrix = skm.confusion_matrix(N_LABELS, preds)
    assert out["confusion_matrix"] == {
        a: {b: int(matrix[i, j]) for j, b in enumerate(N_CLASSES)} for i, a in enumerate(N_CLASSES)
    }
    # One class missing from the test set: no macro AUC rather than a wrong one.
    keep = N_LABELS != 2
    assert classification_metrics(N_LABELS[keep], N_PROBS[keep], N_CLASSES, positive=0)["roc_auc"] is None


def test_n_class_curves_are_one_vs_rest_per_class():
    out = curves(N_LABELS, N_PROBS, N_CLASSES, positive=0)
    assert list(out) == N_CLASSES
    for i, name in enumerate(N_CLASSES):
        fpr, tpr, _ = skm.roc_curve(N_LABELS == i, N_PROBS[:, i])
        assert [p["fpr"] for p in out[name]["roc"]] == pytest.approx(fpr.tolist(), abs=1e-6)
        assert [p["tpr"] for p in out[name]["roc"]] == pytest.approx(tpr.tolist(), abs=1e-6)


def test_curves_of_a_large_test_split_are_thinned_keeping_their_ends_and_area():
    from greenr.evaluation.metrics import CURVE_POINTS

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 30_000)
    p0 = np.clip(rng.normal(0.35 + 0.3 * (labels == 0), 0.2), 0, 1)
    probs = np.stack([p0, 1 - p0], axis=1)
    out = curves(labels, probs, CLASSES, positive=0)["dandelion"]
    fpr, tpr, _ = skm.roc_curve(labels == 0, p0)
    assert len(fpr) > CURVE_POINTS  # the case thinning is for
    for curve in ("roc", "prc"):
        assert 0.9 * CURVE_POINTS <= len(out[curve]) <= CURVE_POINTS
    roc = out["roc"]
    assert (roc[0]["fpr"], roc[0]["tpr"], roc[-1]["fpr"], roc[-1]["tpr"]) == (0.0, 0.0, 1.0, 1.0)
    area = np.trapezoid([p["tpr"] for p in roc], [p["fpr"] for p in roc])
    assert area == pytest.approx(skm.roc_auc_score(labels == 0, p0), abs=1e-3)
    recall = [p["recall"] for p in out["prc"]]
    assert recall == sorted(recall, reverse=True) and recall[0] == 1.0


def test_per_class_keys_stay_put_when_a_class_is_added():
    """`dvc metrics diff` compares keys: adding a class must not move the others' figures."""
    two = classification_metrics(LABELS, PROBS, CLASSES, positive=0)
    three_probs = np.concatenate([PROBS * 0.99, np.full((len(LABELS), 1), 0.01)], axis=1)
    three = classification_metrics(LABELS, three_probs, [*CLASSES, "clover"], positive=0)
    assert three["per_class"]["dandelion"] == two["per_class"]["dandelion"]
    assert three["confusion_matrix"]["grass"]["dandelion"] == two["confusion_matrix"]["grass"]["dandelion"]


def test_positive_class_defaults_to_the_first_and_must_be_a_class():
    assert positive_index(["b", "a"], None) == 0
    assert positive_index(["b", "a"], "a") == 1
    with pytest.raises(GreenrError, match="not one of the classes"):
        positive_index(["b", "a"], "c")


def test_reliability_bins_and_ece_by_hand() -> None:
    from greenr.evaluation.metrics import expected_calibration_error, reliability_bins

    # Four predictions at 0.9 confidence (3 right), two at 0.6 (1 right).
    probs = np.array([[0.9, 0.1]] * 4 + [[0.6, 0.4]] * 2)
    labels = np.array([0, 0, 0, 1, 0, 1])
    rows = reliability_bins(labels, probs, bins=10)
    assert [(r["confidence"], r["accuracy"], r["count"]) for r in rows] == [(0.6, 0.5, 2), (0.9, 0.75, 4)]
    assert expected_calibration_error(labels, probs, bins=10) == pytest.approx((2 * 0.1 + 4 * 0.15) / 6, abs=1e-6)
    assert expected_calibration_error(np.array([], dtype=int), np.empty((0, 2))) == 0.0
