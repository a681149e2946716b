"""Experiment grids with `dvc exp`: queue, run, compare against a base, apply the best.

    greenr grid queue -S model.arch=resnet18,efficientnet_lite0 -S train.lr=0.001,0.0003
    greenr grid run --jobs 1
    greenr grid show --base main            # one table, best test accuracy first
    greenr grid best --base main --apply    # `dvc exp apply` the winner

Each sub-command is one `dvc exp` call (printed before it runs), so the workflow stays plain DVC.
Every experiment's MLflow run is named after its DVC experiment (DVC sets DVC_EXP_NAME for
queued runs) and tagged with its git commit.
"""

from __future__ import annotations

from typing import Any

from greenr import scm
from greenr.errors import GreenrError
from greenr.paths import EVALUATE_METRICS

FIX = "see DVC's message above; `dvc queue logs NAME` shows a failed experiment's log"

# Columns worth a glance; everything else in `dvc exp show` is hidden to keep one screen.
KEEP = (
    "Experiment",
    "Created",
    "State",
    "accuracy",
    "macro.f1",
    "roc_auc",
    "val_acc",
    "model.arch",
    "model.pretrained",
    "model.image_size",
    "train.lr",
    "train.finetune",
    "train.epochs",
)


def queue_argv(sets: list[str], name: str | None = None) -> list[str]:
    argv = ["exp", "run", "--queue"]
    for item in sets:
        argv += ["-S", item]
    return argv + (["--name", name] if name else [])


def show_argv(base: str, metric: str, markdown: bool = False) -> list[str]:
    argv = [
        "exp",
        "show",
        "--rev",
        base,
        "--sort-by",
        f"{EVALUATE_METRICS}:{metric}",
        "--sort-order",
        "desc",
        "--no-pager",
        "--drop",
        ".*",
        # DVC names a column by its key, prefixed with the file only when ambiguous.
        "--keep",
        "(^|:)(" + "|".join(k.replace(".", r"\.") for k in KEEP) + ")$",
    ]
    return argv + (["--md"] if markdown else [])


def _metric(state: dict[str, Any], metric: str) -> float | None:
    data = (state.get("data") or {}).get("metrics", {}).get(EVALUATE_METRICS, {}).get("data") or {}
    value: Any = data
    for part in metric.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return float(value) if isinstance(value, (int, float)) else None


def best_experiment(show_json: list[dict[str, Any]], metric: str = "accuracy") -> tuple[str, float] | None:
    """(name, value) of the experiment with the highest test metric in `dvc exp show --json`."""
    best: tuple[str, float] | None = None
    for baseline in show_json:
        for exp_range in baseline.get("experiments") or []:
            for state in exp_range.get("revs") or []:
                value = _metric(state, metric)
                name = state.get("name") or exp_range.get("name") or state.get("rev")
                if value is not None and name and (best is None or value > best[1]):
                    best = (str(name), value)
    return best


def queue(sets: list[str], name: str | None = None) -> None:
    """Queue one experiment per combination of the -S values."""
    scm.dvc(*queue_argv(sets, name), fix=FIX)


def run_queued(jobs: int = 1) -> None:
    scm.dvc("exp", "run", "--run-all", "--jobs", str(jobs), fix=FIX)


def show(base: str, metric: str = "accuracy", markdown: bool = False) -> None:
    scm.dvc(*show_argv(base, metric, markdown), fix=FIX)


def best(base: str, metric: str = "accuracy", apply: bool = False) -> None:
    """Print (and with `apply`, `dvc exp apply`) the experiment with the best test metric."""
    shown = scm.dvc_json("exp", "show", "--rev", base, fix=FIX) or []
    found = best_experiment(shown, metric)
    if found is None:
        raise GreenrError(
            f"no finished experiment on {base} has {EVALUATE_METRICS}:{metric}",
            "run the grid first: `greenr grid run`",
        )
    print(f"best: {found[0]} ({metric} {found[1]:.4f})")
    if apply:
        scm.dvc("exp", "apply", found[0], fix=FIX)
        print(f"applied {found[0]}: review with `git diff`, then `git commit` and `dvc push`")
