"""Do runs of the pipeline agree? The same commit run under different Pythons (or machines), compared.

    greenr agreement 3.11=. 3.12=../py3.12 3.13=../py3.13

Each argument is a checkout after `greenr run` (optionally named `NAME=DIR`); the first is the
reference. The others agree with it when they have the same test split, predict the same label for
every test image, and have accuracy and macro F1 inside the reference's bootstrap interval (numbers
that are not bit-identical are expected across CPUs and library builds; labels are the contract).
The CLI exits 0: all agree; 1: they do not, each difference printed; 2: a run is incomplete.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from greenr.data.dataset import Example, file_md5, read_manifest
from greenr.errors import GreenrError
from greenr.evaluation.metrics import read_metrics_file
from greenr.evaluation.promote import plot_rows
from greenr.paths import CONFUSION_PLOT, EVALUATE_METRICS, MODEL_PATH, PRC_PLOT, ROC_PLOT, TRAINING_PLOT, split_manifest

# Outputs reported as bit-identical or not (agreement does not require it).
COMPARED_FILES = (EVALUATE_METRICS, TRAINING_PLOT, CONFUSION_PLOT, ROC_PLOT, PRC_PLOT, MODEL_PATH)
# Metrics whose point value must lie in the reference's bootstrap interval (evaluate.json keys).
INTERVAL_METRICS = {"accuracy": ("accuracy",), "macro_f1": ("macro", "f1")}


@dataclass(frozen=True)
class Run:
    name: str
    root: Path
    split: list[Example]
    labels: dict[str, str]
    metrics: dict[str, Any]
    digests: dict[str, str | None]


def load_run(name: str, root: Path) -> Run:
    """The outputs of one finished run; GreenrError when something is missing."""
    if not (root / EVALUATE_METRICS).is_file() or not (root / CONFUSION_PLOT).is_file():
        raise GreenrError(f"{root} has no {EVALUATE_METRICS} or {CONFUSION_PLOT}", f"run `make run` in {root} first")
    labels = {row["path"]: row["predicted"] for row in plot_rows(root, CONFUSION_PLOT)}
    digests = {rel: file_md5(root / rel) if (root / rel).is_file() else None for rel in COMPARED_FILES}
    return Run(
        name,
        root,
        read_manifest(root / split_manifest("test")),
        labels,
        read_metrics_file(root / EVALUATE_METRICS),
        digests,
    )


def _value(metrics: dict[str, Any], keys: tuple[str, ...]) -> float:
    for key in keys:
        metrics = metrics[key]
    return float(metrics)  # type: ignore[arg-type]


def _numbers(tree: Any, prefix: str = "") -> dict[str, float]:
    """Every number in a metrics tree, by dotted key."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _numbers(sub, f"{prefix}{key}.").items()}
    if isinstance(tree, list):
        return {k: v for i, sub in enumerate(tree) for k, v in _numbers(sub, f"{prefix}{i}.").items()}
    if isinstance(tree, int | float) and not isinstance(tree, bool):
        return {prefix.rstrip("."): float(tree)}
    return {}


def differences(ref: Run, other: Run) -> list[str]:
    """Why `other` does not agree with `ref` (empty: it agrees)."""
    if ref.split != other.split:
        return [f"{other.name}: test split differs from {ref.name}'s ({split_manifest('test')})"]
    problems = [
        f"{other.name}: {path} predicted {other.labels.get(path)!r}, {ref.name} predicted {label!r}"
        for path, label in sorted(ref.labels.items())
        if other.labels.get(path) != label
    ]
    problems += [
        f"{other.name}: {path} is not in {ref.name}'s predictions"
        for path in sorted(set(other.labels) - set(ref.labels))
    ]
    intervals = ref.metrics.get("bootstrap") or {}
    for name, keys in INTERVAL_METRICS.items():
        value = _value(other.metrics, keys)
        low, high = intervals.get(name) or (_value(ref.metrics, keys),) * 2
        if not low <= value <= high:
            problems.append(f"{other.name}: {name} {value} outside {ref.name}'s bootstrap interval [{low}, {high}]")
    return problems


def summary(ref: Run, other: Run) -> str:
    """How close `other` is to `ref`: labels, the largest metric difference, which outputs are bit-identical."""
    same = sum(other.labels.get(p) == label for p, label in ref.labels.items())
    a, b = _numbers(ref.metrics), _numbers(other.metrics)
    key = max(a.keys() & b.keys(), key=lambda k: abs(a[k] - b[k]))
    metrics = "metrics equal" if a == b else f"largest metric difference: {key} {a[key]} vs {b[key]}"
    compared = [rel for rel in COMPARED_FILES if ref.digests[rel] and other.digests[rel]]
    differ = [rel for rel in compared if ref.digests[rel] != other.digests[rel]]
    files = f"not bit-identical: {', '.join(differ)}" if differ else f"bit-identical: {', '.join(compared)}"
    return f"{other.name} vs {ref.name}: {same}/{len(ref.labels)} labels same; {metrics}; {files}"


@dataclass(frozen=True)
class Outcome:
    """How runs compare with the first (the reference): one summary line per other run, and every
    difference that breaks agreement."""

    reference: Run
    runs: list[Run]
    summaries: list[str]
    problems: list[str]

    @property
    def agree(self) -> bool:
        return not self.problems

    def headline(self) -> str:
        ref = self.reference
        return (
            f"{ref.name}: accuracy {_value(ref.metrics, ('accuracy',))}, macro F1 "
            f"{_value(ref.metrics, ('macro', 'f1'))}, bootstrap {ref.metrics.get('bootstrap')}"
        )


def compare_runs(named_roots: Sequence[tuple[str, Path]]) -> Outcome:
    """Compare the runs (NAME, checkout), the first being the reference; GreenrError when fewer
    than two are given or one is incomplete."""
    if len(named_roots) < 2:
        raise GreenrError("agreement needs the reference and at least one run to compare", "name two checkouts")
    runs = [load_run(name, root) for name, root in named_roots]
    ref = runs[0]
    summaries = [summary(ref, other) for other in runs[1:]]
    problems = [problem for other in runs[1:] for problem in differences(ref, other)]
    return Outcome(ref, runs, summaries, problems)
