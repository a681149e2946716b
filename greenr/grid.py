"""Experiment grids with `dvc exp`: queue, run, compare against a base, apply the best.

    python -m greenr.grid queue -S model.arch=resnet18,efficientnet_lite0 -S train.lr=0.001,0.0003
    python -m greenr.grid run --jobs 1
    python -m greenr.grid show --base main            # one table, best test accuracy first
    python -m greenr.grid best --base main --apply    # `dvc exp apply` the winner

Each sub-command is one `dvc exp` call (printed before it runs), so the workflow stays plain DVC.
Every experiment's MLflow run is named after its DVC experiment (DVC sets DVC_EXP_NAME for
queued runs) and tagged with its git commit.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from typing import Any

from greenr.errors import GreenrError, exits_cleanly
from greenr.paths import repo_root
from greenr.promote import METRICS_FILE

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
    argv = ["dvc", "exp", "run", "--queue"]
    for item in sets:
        argv += ["-S", item]
    return argv + (["--name", name] if name else [])


def show_argv(base: str, metric: str, markdown: bool = False) -> list[str]:
    argv = [
        "dvc",
        "exp",
        "show",
        "--rev",
        base,
        "--sort-by",
        f"{METRICS_FILE}:{metric}",
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


def _dvc(argv: list[str], capture: bool = False) -> str:
    print("$ " + shlex.join(argv), file=sys.stderr)
    try:
        done = subprocess.run(argv, cwd=repo_root(), text=True, check=False, capture_output=capture)
    except FileNotFoundError:
        raise GreenrError(
            "the dvc command is not on PATH", "put the project venv's bin first on PATH (`source .venv/bin/activate`)"
        ) from None
    if done.returncode != 0:
        detail = f": {done.stderr.strip()[-500:]}" if capture else ""
        raise GreenrError(
            f"`{shlex.join(argv)}` failed (exit {done.returncode}){detail}",
            "see DVC's message above; `dvc queue logs NAME` shows a failed experiment's log",
        )
    return done.stdout or ""


def _metric(state: dict[str, Any], metric: str) -> float | None:
    data = (state.get("data") or {}).get("metrics", {}).get(METRICS_FILE, {}).get("data") or {}
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


@exits_cleanly
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m greenr.grid", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    queue = sub.add_parser("queue", help="queue one experiment per combination of -S values")
    queue.add_argument(
        "-S",
        "--set-param",
        dest="sets",
        action="append",
        required=True,
        metavar="KEY=V1,V2",
        help="as `dvc exp run -S` (comma-separated = grid)",
    )
    queue.add_argument("--name", help="experiment name (single experiments only)")
    run = sub.add_parser("run", help="run everything queued")
    run.add_argument("--jobs", type=int, default=1, help="parallel experiments (default 1: CPU-bound)")
    for name in ("show", "best"):
        cmd = sub.add_parser(
            name, help="table against BASE" if name == "show" else "print (and --apply) the best experiment on BASE"
        )
        cmd.add_argument("--base", default="main", help="baseline revision (default: main)")
        cmd.add_argument(
            "--metric", default="accuracy", help=f"key in {METRICS_FILE} to sort by (default: accuracy; e.g. macro.f1)"
        )
        if name == "show":
            cmd.add_argument("--md", action="store_true", help="Markdown table (for a PR)")
        else:
            cmd.add_argument("--apply", action="store_true", help="`dvc exp apply` it to the workspace")
    args = parser.parse_args(argv)

    if args.command == "queue":
        _dvc(queue_argv(args.sets, args.name))
    elif args.command == "run":
        _dvc(["dvc", "exp", "run", "--run-all", "--jobs", str(args.jobs)])
    elif args.command == "show":
        _dvc(show_argv(args.base, args.metric, args.md))
    else:
        shown = json.loads(_dvc(["dvc", "exp", "show", "--rev", args.base, "--json"], capture=True) or "[]")
        best = best_experiment(shown, args.metric)
        if best is None:
            raise GreenrError(
                f"no finished experiment on {args.base} has {METRICS_FILE}:{args.metric}",
                "run the grid first: `python -m greenr.grid run`",
            )
        print(f"best: {best[0]} ({args.metric} {best[1]:.4f})")
        if args.apply:
            _dvc(["dvc", "exp", "apply", best[0]])
            print(f"applied {best[0]}: review with `git diff`, then `git commit` and `dvc push`")


if __name__ == "__main__":
    main()
