"""The promotion gate on a real git repository with two commits of different metrics."""

from __future__ import annotations

import subprocess

from greenr.evaluation.promote import gate
from greenr.params import PromoteParams
from tests.helpers.project import VENV_BIN, evaluate_metrics, run


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
