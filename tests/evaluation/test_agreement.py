"""greenr agreement: runs under different Pythons agree on labels and on metrics within the interval."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from greenr.cli import main
from greenr.data.dataset import Example, write_manifest
from greenr.evaluation.metrics import bootstrap_intervals, classification_metrics

CLASSES = ["dandelion", "grass"]
LABELS = np.array([0] * 10 + [1] * 10)


def make_run(root: Path, probs: np.ndarray, split_seed: int = 0) -> Path:
    """A checkout as `greenr run` leaves it: test split, per-image predictions, evaluate.json."""
    paths = [f"data/{CLASSES[y]}/{i + split_seed:08d}.jpg" for i, y in enumerate(LABELS)]
    write_manifest(
        root / "splits" / "test.csv",
        [Example(p, CLASSES[y], f"{i:032x}") for i, (p, y) in enumerate(zip(paths, LABELS))],
    )
    (root / "plots" / "evaluate").mkdir(parents=True)
    with open(root / "plots" / "evaluate" / "confusion.csv", "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["path", "actual", "predicted"])
        writer.writerows((p, CLASSES[y], CLASSES[k]) for p, y, k in zip(paths, LABELS, probs.argmax(1)))
    report = classification_metrics(LABELS, probs, CLASSES, 0)
    report["bootstrap"] = bootstrap_intervals(LABELS, probs, 200, 0.95, 0)
    (root / "metrics").mkdir()
    (root / "metrics" / "evaluate.json").write_text(json.dumps(report, indent=2, sort_keys=True))
    return root


def probabilities(wrong: int = 2, nudge: float = 0.0) -> np.ndarray:
    """Confident right answers except the first `wrong` images; `nudge` shifts every probability."""
    p_dandelion = np.where(LABELS == 0, 0.8, 0.2) + nudge
    p_dandelion[:wrong] = 0.3
    return np.stack([p_dandelion, 1 - p_dandelion], axis=1)


def run_main(capsys, *dirs: Path) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(["agreement", *(f"{d.name}={d}" for d in dirs)])
    out = capsys.readouterr()
    return exited.value.code, out.out, out.err


def test_identical_runs_agree_bit_for_bit(tmp_path, capsys):
    a = make_run(tmp_path / "py311", probabilities())
    b = make_run(tmp_path / "py313", probabilities())
    code, out, err = run_main(capsys, a, b)
    assert code == 0, err
    assert (
        "py313 vs py311: 20/20 labels same; metrics equal; bit-identical: metrics/evaluate.json, "
        "plots/evaluate/confusion.csv"
    ) in out
    assert "all 2 runs agree" in out


def test_small_numeric_differences_agree_when_labels_match(tmp_path, capsys):
    a = make_run(tmp_path / "a", probabilities())
    b = make_run(tmp_path / "b", probabilities(nudge=0.01))
    code, out, err = run_main(capsys, a, b)
    assert code == 0, err
    assert "20/20 labels same; largest metric difference: log_loss" in out
    assert "not bit-identical: metrics/evaluate.json" in out


def test_a_flipped_label_disagrees_and_names_the_image(tmp_path, capsys):
    a = make_run(tmp_path / "a", probabilities(wrong=2))
    b = make_run(tmp_path / "b", probabilities(wrong=3))
    code, out, err = run_main(capsys, a, b)
    assert code == 1
    assert "19/20 labels same" in out
    assert "DISAGREE b: data/dandelion/00000002.jpg predicted 'grass', a predicted 'dandelion'" in err


def test_accuracy_outside_the_reference_interval_disagrees(tmp_path, capsys):
    a = make_run(tmp_path / "a", probabilities(wrong=0))
    b = make_run(tmp_path / "b", probabilities(wrong=8))
    code, _, err = run_main(capsys, a, b)
    assert code == 1
    assert "b: accuracy 0.6 outside a's bootstrap interval [1.0, 1.0]" in err


def test_another_test_split_is_reported_as_such(tmp_path, capsys):
    a = make_run(tmp_path / "a", probabilities())
    b = make_run(tmp_path / "b", probabilities(), split_seed=100)
    code, _, err = run_main(capsys, a, b)
    assert code == 1
    assert "b: test split differs from a's (splits/test.csv)" in err


def test_an_unfinished_run_says_what_to_run(tmp_path, capsys):
    a = make_run(tmp_path / "a", probabilities())
    (tmp_path / "empty").mkdir()
    code, _, err = run_main(capsys, a, tmp_path / "empty")
    assert code == 2
    assert "has no metrics/evaluate.json" in err and "run `make run`" in err


def test_one_run_is_not_a_comparison(tmp_path, capsys):
    a = make_run(tmp_path / "a", probabilities())
    code, _, err = run_main(capsys, a)
    assert code == 2
    assert "needs the reference and at least one run" in err
