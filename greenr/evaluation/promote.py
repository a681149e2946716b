"""The promotion gate: is the candidate's model good enough to replace the base revision's?

    greenr promote --base main [--candidate metrics/evaluate.json] [--register]

Compares the candidate's test metrics (metrics/evaluate.json in the workspace) with the base
revision's (`git show BASE:metrics/evaluate.json`) and with the absolute floors in the
`promote:` section of params.yaml. When the test split changed between them (new data), it says
so and also compares the two on the test images both share (per-image predictions from
plots/evaluate/confusion.csv); the checks themselves stay on the whole test splits.
The CLI exits 0: promote; 1: rejected, with every reason printed; 2: the gate could not decide
(missing or unreadable metrics).
With `--register`, a promoted model is registered in the MLflow Model Registry and given the
alias `promote.alias` (`champion`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from greenr import scm
from greenr.evaluation.metrics import read_metrics_at, read_metrics_file
from greenr.params import PromoteParams, load_section
from greenr.paths import CONFUSION_PLOT, EVALUATE_METRICS, MODEL_PATH, repo_root


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


def plot_rows(root: Path, rel: str, rev: str | None = None) -> list[dict[str, str]]:
    """Rows of a plots CSV in the workspace, or as committed at `rev` ([] where it is absent)."""
    if rev is None:
        path = root / rel
        text = path.read_text(encoding="utf-8") if path.is_file() else None
    else:
        text = scm.show(rev, rel, cwd=root)
    return list(csv.DictReader(io.StringIO(text))) if text else []


@dataclass(frozen=True)
class SplitChange:
    """The candidate's test split against the base's, and both scored on the images they share."""

    base_n: int
    candidate_n: int
    only_base: int | None  # None: the per-image predictions of one side are missing
    only_candidate: int | None
    shared: int | None
    base: dict[str, float] | None  # accuracy and macro_f1 on the shared images
    candidate: dict[str, float] | None

    def lines(self) -> list[str]:
        changed = f"base {self.base_n} images, candidate {self.candidate_n}"
        if self.only_base is not None:
            changed += f" ({self.only_candidate} only in the candidate's, {self.only_base} only in the base's)"
        out = [f"note: the test split changed ({changed}): the checks compare metrics over different images"]
        if self.base is None or self.candidate is None:
            out.append(f"  no per-image predictions ({CONFUSION_PLOT}) on both sides to compare on shared images")
            return out
        for key, name in (("accuracy", "accuracy"), ("macro_f1", "macro F1")):
            old, new = self.base[key], self.candidate[key]
            out.append(
                f"  on the {self.shared} test images both share: {name} {new:.4f} vs base {old:.4f} "
                f"(delta {new - old:+.4f})"
            )
        return out


def _shared_scores(rows: Sequence[dict[str, str]]) -> dict[str, float]:
    from sklearn import metrics as skm

    actual = [r["actual"] for r in rows]
    predicted = [r["predicted"] for r in rows]
    return {
        "accuracy": round(float(skm.accuracy_score(actual, predicted)), 6),
        "macro_f1": round(float(skm.f1_score(actual, predicted, average="macro", zero_division=0)), 6),
    }


def split_change(root: Path, base_rev: str, base: dict[str, Any], candidate: dict[str, Any]) -> SplitChange | None:
    """How the test split changed from `base_rev` to the workspace (None: the same images)."""
    base_rows = {r["path"]: r for r in plot_rows(root, CONFUSION_PLOT, base_rev)}
    candidate_rows = {r["path"]: r for r in plot_rows(root, CONFUSION_PLOT)}
    base_n, candidate_n = int(base.get("n") or len(base_rows)), int(candidate.get("n") or len(candidate_rows))
    # Rows that do not match their metrics file (a --candidate from elsewhere) cannot be compared.
    usable = bool(base_rows) and len(base_rows) == base_n and len(candidate_rows) == candidate_n
    if usable and base_rows.keys() == candidate_rows.keys():
        return None
    if not usable:
        if base_n == candidate_n:
            return None
        return SplitChange(base_n, candidate_n, None, None, None, None, None)
    # An image relabeled between the two is not the same test case.
    shared = sorted(
        p for p in base_rows.keys() & candidate_rows.keys() if base_rows[p]["actual"] == candidate_rows[p]["actual"]
    )
    return SplitChange(
        base_n,
        candidate_n,
        len(base_rows.keys() - candidate_rows.keys()),
        len(candidate_rows.keys() - base_rows.keys()),
        len(shared),
        _shared_scores([base_rows[p] for p in shared]) if shared else None,
        _shared_scores([candidate_rows[p] for p in shared]) if shared else None,
    )


def gate(candidate: dict[str, Any], base: dict[str, Any] | None, rules: PromoteParams) -> list[Check]:
    """Every check, passed or not: floors first, then regressions against the base."""
    acc, f1 = float(candidate["accuracy"]), float(candidate["macro"]["f1"])
    checks = [
        Check(
            "accuracy floor",
            acc >= rules.min_accuracy,
            f"accuracy {acc:.4f} {'>=' if acc >= rules.min_accuracy else '<'} "
            f"promote.min_accuracy {rules.min_accuracy:.4f}",
        ),
        Check(
            "macro F1 floor",
            f1 >= rules.min_macro_f1,
            f"macro F1 {f1:.4f} {'>=' if f1 >= rules.min_macro_f1 else '<'} "
            f"promote.min_macro_f1 {rules.min_macro_f1:.4f}",
        ),
    ]
    if base is not None:
        for name, new, old, allowed in (
            ("accuracy", acc, float(base["accuracy"]), rules.max_accuracy_drop),
            ("macro F1", f1, float(base["macro"]["f1"]), rules.max_macro_f1_drop),
        ):
            ok = new >= old - allowed - 1e-12
            checks.append(
                Check(
                    f"{name} vs base",
                    ok,
                    f"{name} {new:.4f} vs base {old:.4f} (delta {new - old:+.4f}, allowed drop {allowed:.4f})",
                )
            )
    return checks


@dataclass(frozen=True)
class Registered:
    model: str
    version: str
    alias: str


def register(root: Path | None = None) -> Registered:
    """Register the workspace checkpoint's MLflow model under `promote.alias`."""
    from greenr.model import checkpoint
    from greenr.ops import tracking

    root = root or repo_root()
    rules = load_section("promote")
    ckpt = checkpoint.load(root / MODEL_PATH)
    version = tracking.register_checkpoint_model(ckpt.sha256, rules.registered_model, rules.alias)
    return Registered(rules.registered_model, version, rules.alias)


@dataclass(frozen=True)
class GateResult:
    """The gate's verdict on a candidate against `base_rev`."""

    base_rev: str
    checks: list[Check]
    base_found: bool  # False: the base has no metrics, only the floors applied
    split_change: SplitChange | None  # the test split changed between base and candidate

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    @property
    def promoted(self) -> bool:
        return not self.failed


def run_gate(base_rev: str = "main", candidate_path: Path | None = None) -> GateResult:
    """Every check of the candidate's metrics (default: the workspace's) against `base_rev`'s and
    the floors; GreenrError when the metrics cannot be read."""
    root = repo_root()
    rules = load_section("promote")
    candidate = read_metrics_file(candidate_path or root / EVALUATE_METRICS)
    base = read_metrics_at(base_rev, root)
    checks = gate(candidate, base, rules)
    change = None if base is None else split_change(root, base_rev, base, candidate)
    return GateResult(base_rev, checks, base is not None, change)
