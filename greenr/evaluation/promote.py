"""The promotion gate: is the candidate's model good enough to replace the base revision's?

    greenr promote --base main [--candidate metrics/evaluate.json] [--register]

Compares the candidate's test metrics (metrics/evaluate.json in the workspace) with the base
revision's (`git show BASE:metrics/evaluate.json`) and with the absolute floors in the
`promote:` section of params.yaml. Exit 0: promote; exit 1: rejected, with every reason
printed; exit 2: the gate could not decide (missing or unreadable metrics).
With `--register`, a promoted model is registered in the MLflow Model Registry and given the
alias `promote.alias` (`champion`).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from greenr import scm
from greenr.errors import GreenrError
from greenr.params import PromoteParams, load_section
from greenr.paths import EVALUATE_METRICS, MODEL_PATH, repo_root


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


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


def register(root: Path, rules: PromoteParams) -> str:
    """Register the workspace checkpoint's MLflow model under `rules.alias`; return the version."""
    from greenr.model import checkpoint
    from greenr.ops import tracking

    ckpt = checkpoint.load(root / MODEL_PATH)
    version = tracking.register_checkpoint_model(ckpt.sha256, rules.registered_model, rules.alias)
    return version


def run_gate(base_rev: str = "main", candidate_path: Path | None = None, register_model: bool = False) -> int:
    """Print every check; 0 when the candidate is promoted, 1 when rejected."""
    root = repo_root()
    rules = load_section("promote")
    candidate = read_metrics_file(candidate_path or root / EVALUATE_METRICS)
    base = read_metrics_at(base_rev, root)
    checks = gate(candidate, base, rules)
    for check in checks:
        print(f"{'PASS' if check.passed else 'FAIL'}  {check.name}: {check.detail}")
    if base is None:
        print(f"note: {base_rev} has no {EVALUATE_METRICS}; only the floors apply")
    failed = [c for c in checks if not c.passed]
    if failed:
        print(
            f"rejected: {len(failed)} of {len(checks)} checks failed ({', '.join(c.name for c in failed)})",
            file=sys.stderr,
        )
        return 1
    print(f"promoted: the candidate passes all {len(checks)} checks against {base_rev}")
    if register_model:
        version = register(root, rules)
        print(f"registered {rules.registered_model} version {version} as @{rules.alias}")
    return 0


if __name__ == "__main__":
    from greenr.cli import main

    main(["promote", *sys.argv[1:]])
