"""The promotion gate on a real git repository with two commits of different metrics."""

from __future__ import annotations

import subprocess
from pathlib import Path

from greenr.evaluation.promote import gate, split_change
from greenr.params import PromoteParams
from greenr.paths import CONFUSION_PLOT
from tests.helpers.project import VENV_BIN, evaluate_metrics, git, run


def run_gate(root, env, *args: str) -> subprocess.CompletedProcess:
    return run([str(VENV_BIN / "greenr"), "promote", *args], root, env, check=False)


def test_gate_passes_a_better_candidate(metrics_repo, env_for) -> None:
    root = metrics_repo(evaluate_metrics(0.90, 0.90), evaluate_metrics(0.95, 0.95))
    done = run_gate(root, env_for(root), "--base", "HEAD~1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "promoted" in done.stdout
    assert "accuracy 0.9500 vs base 0.9000 (delta +0.0500" in done.stdout


def test_gate_fails_a_worse_candidate_and_says_why(metrics_repo, env_for) -> None:
    root = metrics_repo(evaluate_metrics(0.95, 0.95), evaluate_metrics(0.90, 0.91))
    done = run_gate(root, env_for(root), "--base", "HEAD~1")
    assert done.returncode == 1
    assert "FAIL  accuracy vs base: accuracy 0.9000 vs base 0.9500 (delta -0.0500" in done.stdout
    assert "FAIL  macro F1 vs base" in done.stdout
    assert "rejected: 2 of 4 checks failed" in done.stderr


def test_gate_fails_below_the_floor_even_without_a_base(metrics_repo, env_for) -> None:
    root = metrics_repo(evaluate_metrics(0.5, 0.5), evaluate_metrics(0.80, 0.80))
    (root / "metrics" / "evaluate.json").rename(root / "candidate.json")
    done = run_gate(root, env_for(root), "--base", "HEAD", "--candidate", "candidate.json")
    assert done.returncode == 1
    assert "FAIL  accuracy floor: accuracy 0.8000 < promote.min_accuracy 0.8500" in done.stdout


def test_gate_with_a_base_without_metrics_uses_floors(metrics_repo, env_for) -> None:
    root = metrics_repo(evaluate_metrics(0.9, 0.9), evaluate_metrics(0.91, 0.91))
    done = run_gate(root, env_for(root), "--base", "4b825dc642cb6eb9a060e54bf8d69288fbee4904")
    assert done.returncode == 0, done.stderr
    assert "only the floors apply" in done.stdout


def test_gate_unknown_base_is_a_clear_error(metrics_repo, env_for) -> None:
    root = metrics_repo(evaluate_metrics(0.9, 0.9), evaluate_metrics(0.91, 0.91))
    done = run_gate(root, env_for(root), "--base", "no-such-branch")
    assert done.returncode == 2
    assert "fix:" in done.stderr and "Traceback" not in done.stderr


def test_allowed_drop_is_inclusive() -> None:
    rules = PromoteParams(max_accuracy_drop=0.02, max_macro_f1_drop=0.02, min_accuracy=0, min_macro_f1=0)
    assert all(c.passed for c in gate(evaluate_metrics(0.88, 0.88), evaluate_metrics(0.90, 0.90), rules))
    assert not all(c.passed for c in gate(evaluate_metrics(0.87, 0.88), evaluate_metrics(0.90, 0.90), rules))


def confusion_rows(root: Path, rows: list[tuple[str, str, str]]) -> None:
    """plots/evaluate/confusion.csv as the evaluate stage writes it: path, actual, predicted per test image."""
    path = root / CONFUSION_PLOT
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("path,actual,predicted\n" + "".join(f"{p},{a},{q}\n" for p, a, q in rows))


def grown_test_split(metrics_repo) -> Path:
    """Base: 60 test images, 3 wrong. Candidate: the same 60 (1 wrong) and 2 new ones (both wrong)."""
    old = [(f"data/{c}/{i:08d}.jpg", c, c) for c in ("dandelion", "grass") for i in range(30)]
    base_rows = [(p, a, "grass" if i < 3 else q) for i, (p, a, q) in enumerate(old)]
    candidate_rows = [(p, a, "grass" if i < 1 else q) for i, (p, a, q) in enumerate(old)]
    candidate_rows += [
        ("data/grass/inbox-1.jpg", "grass", "dandelion"),
        ("data/grass/inbox-2.jpg", "grass", "dandelion"),
    ]
    root = metrics_repo(
        evaluate_metrics(0.95, 0.95), {**evaluate_metrics(0.951613, 0.95), "n": 62}, commit_candidate=False
    )
    confusion_rows(root, base_rows)
    git(root, "add", CONFUSION_PLOT)
    git(root, "commit", "-qm", "base with its per-image predictions")  # the candidate's metrics stay uncommitted
    confusion_rows(root, candidate_rows)
    return root


def test_gate_says_when_the_test_split_changed_and_compares_on_the_shared_images(metrics_repo, env_for) -> None:
    root = grown_test_split(metrics_repo)
    done = run_gate(root, env_for(root), "--base", "HEAD")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "note: the test split changed (base 60 images, candidate 62 (2 only in the candidate's, 0 only" in (
        done.stdout
    )
    assert "on the 60 test images both share: accuracy 0.9833 vs base 0.9500 (delta +0.0333)" in done.stdout


def test_report_says_when_the_test_split_changed(metrics_repo, env_for, monkeypatch) -> None:
    from greenr.evaluation.report import build_report

    root = grown_test_split(metrics_repo)
    for key, value in env_for(root).items():
        monkeypatch.setenv(key, value)
    text = build_report(root, "HEAD", root / "reports" / "pr.md", plots=False)
    assert "### The test split changed" in text and "tested on 60 images, this change on 62" in text
    assert "On the 60 test images both share:" in text and "| accuracy | 0.9500 | 0.9833 | +0.0333 |" in text


def test_split_change_without_per_image_predictions_still_says_the_size_changed(metrics_repo) -> None:
    base, candidate = evaluate_metrics(0.9, 0.9), {**evaluate_metrics(0.9, 0.9), "n": 62}
    root = metrics_repo(base, candidate)  # no plots/evaluate/confusion.csv anywhere
    change = split_change(root, "HEAD~1", base, candidate)
    assert change is not None and change.shared is None
    assert "base 60 images, candidate 62" in change.lines()[0] and "no per-image predictions" in change.lines()[1]
    assert split_change(root, "HEAD~1", base, evaluate_metrics(0.95, 0.9)) is None
