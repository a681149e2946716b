"""The PR report: one Markdown file comparing the workspace with a base revision.

    greenr report --base main --out reports/pr.md

Sections: test metrics (`dvc metrics diff --json`) and params (`dvc params diff --json`) with
deltas, the bootstrap intervals from metrics/evaluate.json, the recipe `train.finetune: auto`
chose and its evidence (metrics/train.json), and the plots (training curves, confusion matrix,
ROC) of this change beside the base's, rendered as PNG files next to the report.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from greenr import scm
from greenr.atomic import atomic_open
from greenr.evaluation.metrics import read_metrics_at, read_metrics_file
from greenr.evaluation.promote import SplitChange, plot_rows, split_change
from greenr.paths import CONFUSION_PLOT, EVALUATE_METRICS, ROC_PLOT, TRAIN_METRICS, TRAINING_PLOT, repo_root

NOISE_NOTE = (
    "The test set is small, so a single accuracy is noisy: with 60 images one image is "
    "1.7 points. Treat a difference as real only when the intervals barely overlap."
)


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}"
    return f"`{value}`" if isinstance(value, (list, dict)) else str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def metrics_table(diff: dict[str, Any]) -> str:
    rows = []
    for path, entries in sorted(diff.items()):
        for name, values in sorted(entries.items()):
            old, new, delta = values.get("old"), values.get("new"), values.get("diff")
            if isinstance(old, list) or isinstance(new, list) or name.startswith("confusion_matrix."):
                continue  # intervals and the confusion matrix have their own sections
            numeric = isinstance(delta, (int, float)) and not isinstance(old, bool) and not isinstance(new, bool)
            delta_text = f"{delta:+.4f}" if numeric else "–"
            rows.append([path, name, _fmt(old), _fmt(new), delta_text])
    if not rows:
        return "_No metric changed._"
    return _table(["file", "metric", "base", "this change", "delta"], rows)


def params_table(diff: dict[str, Any]) -> str:
    # Parameters exactly as written (an lr of 0.0003 must not print as 0.0003 vs 0.0000).
    def raw(value: Any) -> str:
        return "–" if value is None else str(value)

    rows = [
        [path, name, raw(values.get("old")), raw(values.get("new"))]
        for path, entries in sorted(diff.items())
        for name, values in sorted(entries.items())
    ]
    if not rows:
        return "_No parameter changed._"
    return _table(["file", "param", "base", "this change"], rows)


def intervals_table(base: dict[str, Any] | None, new: dict[str, Any]) -> str:
    def interval(report: dict[str, Any] | None, key: str) -> str:
        boot = (report or {}).get("bootstrap") or {}
        if key not in boot:
            return "–"
        low, high = boot[key]
        return f"[{low:.3f}, {high:.3f}]"

    def point(report: dict[str, Any] | None, key: str) -> str:
        if report is None:
            return "–"
        return f"{report['accuracy']:.4f}" if key == "accuracy" else f"{report['macro']['f1']:.4f}"

    confidence = (new.get("bootstrap") or {}).get("confidence", 0.95)
    rows = [
        [label, point(base, key), interval(base, key), point(new, key), interval(new, key)]
        for label, key in (("accuracy", "accuracy"), ("macro F1", "macro_f1"))
    ]
    return f"Bootstrap {confidence:.0%} intervals over the {new.get('n', '?')} test images:\n\n" + _table(
        ["metric", "base", "base interval", "this change", "interval"], rows
    )


def _train_record(text: str | None) -> dict[str, Any] | None:
    """metrics/train.json as a dict; None when absent or not JSON (the section then shows "–")."""
    if text is None:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def recipe_choice_section(base: dict[str, Any] | None, new: dict[str, Any] | None) -> list[str]:
    """Markdown: which recipe `train.finetune: auto` kept and on what evidence ([] when it did not run)."""
    auto = (new or {}).get("finetune_auto")
    if not isinstance(auto, dict):
        return []
    base_auto = (base or {}).get("finetune_auto") or {}
    tried, base_tried = auto.get("tried") or {}, base_auto.get("tried") or {}
    costs = auto.get("estimated_cost") or {}
    over = set(auto.get("over_budget") or [])

    def loss(record: dict[str, Any], setting: str) -> str:
        value = (record.get(setting) or {}).get("val_loss")
        return "–" if value is None else f"{value:.4f}"

    rows = []
    for setting in sorted(costs, key=lambda s: (costs[s], s)):
        picked = " (kept)" if setting == auto.get("picked") else ""
        if setting in over:
            outcome = "over budget"
        elif setting in tried:
            outcome = f"val acc {tried[setting]['val_acc']:.4f}"
        else:
            outcome = "–"
        rows.append(
            [
                f"`{setting}`{picked}",
                f"{costs[setting]:.2f}",
                loss(base_tried, setting),
                loss(tried, setting),
                outcome,
            ]
        )
    base_pick = (base or {}).get("finetune")
    changed = "" if base_pick in (None, auto.get("picked")) else f" (the base kept `{base_pick}`)"
    return [
        "### Recipe choice (`train.finetune: auto`)",
        "",
        f"Kept `{auto.get('picked')}`{changed}, by {auto.get('by', 'validation log loss')}, among the "
        f"candidates whose summed training compute fits `train.budget` = {auto.get('budget')} "
        "(FLOPs per image as a multiple of `frozen`'s):",
        "",
        _table(["setting", "estimated cost", "base val loss", "val loss", "this change"], rows),
        "",
    ]


def render_plots(root: Path, out_dir: Path, base: str | None = None) -> list[tuple[str, str]]:
    """PNG files of the plots, this change beside `base`; returns (title, file name) of each made."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: list[tuple[str, str]] = []
    out_dir.mkdir(parents=True, exist_ok=True)

    def save(fig: Any, name: str, title: str) -> None:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        with atomic_open(out_dir / name, "wb") as handle:
            handle.write(buffer.getvalue())
        made.append((title, name))

    def both(rel: str) -> list[tuple[str, list[dict[str, str]]]]:
        """[(label, rows)] for the base (if it has the file) and this change (if it has it)."""
        runs = [(f"base ({base})", plot_rows(root, rel, base))] if base else []
        runs.append(("this change", plot_rows(root, rel)))
        return [(label, rows) for label, rows in runs if rows]

    training = both(TRAINING_PLOT)
    if any(label == "this change" for label, _ in training):
        fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(9, 3.2))
        for run, (label, history) in enumerate(training):
            epochs = [int(r["epoch"]) for r in history]
            prefix = "" if len(training) == 1 else f"{label}: "
            for key, ax in (("loss", loss_ax), ("acc", acc_ax)):
                for split, marker in (("train", "o"), ("val", "s")):
                    ax.plot(
                        epochs,
                        [float(r[f"{split}_{key}"]) for r in history],
                        marker=marker,
                        markersize=3,
                        linestyle="--" if run < len(training) - 1 else "-",
                        label=f"{prefix}{split}",
                    )
                ax.set_xlabel("epoch")
                ax.set_title("loss" if key == "loss" else "accuracy")
        acc_ax.legend(fontsize="small")
        save(fig, "training.png", "Training curves" + (" (dashed: base)" if len(training) > 1 else ""))

    confusions = both(CONFUSION_PLOT)
    if any(label == "this change" for label, _ in confusions):
        fig, axes = plt.subplots(
            1, len(confusions), figsize=(3.6 * len(confusions), 3.2), squeeze=False, layout="constrained"
        )
        for column, (ax, (label, confusion)) in enumerate(zip(axes[0], confusions, strict=True)):
            classes = sorted({r["actual"] for r in confusion} | {r["predicted"] for r in confusion})
            counts = [
                [sum(r["actual"] == a and r["predicted"] == p for r in confusion) for p in classes] for a in classes
            ]
            ax.imshow(counts, cmap="Greens")
            top = max(max(row) for row in counts) or 1
            for i, row in enumerate(counts):
                for j, count in enumerate(row):
                    ax.text(j, i, str(count), ha="center", va="center", color="white" if count > top / 2 else "black")
            ax.set_xticks(range(len(classes)), classes)
            ax.set_yticks(range(len(classes)), classes if column == 0 else [])
            ax.set_xlabel("predicted")
            if column == 0:
                ax.set_ylabel("actual")
            ax.set_title(label, fontsize="small")
        save(fig, "confusion.png", "Confusion matrix (test)")

    # One ROC file per class (2 classes: the positive one); base and this change in one frame each.
    names = sorted(p.stem for p in (root / ROC_PLOT).glob("*.csv"))
    curves = {name: both(f"{ROC_PLOT}/{name}.csv") for name in names}
    if curves:
        fig, axes = plt.subplots(1, len(curves), figsize=(3.6 * len(curves), 3.2), squeeze=False, layout="constrained")
        for ax, (name, runs) in zip(axes[0], curves.items(), strict=True):
            for label, roc in runs:
                ax.plot([float(r["fpr"]) for r in roc], [float(r["tpr"]) for r in roc], label=label)
            ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
            ax.set_xlabel("false positive rate")
            ax.set_ylabel("true positive rate")
            ax.set_title(name if len(curves) == 1 else f"{name} vs rest", fontsize="small")
            ax.legend(fontsize="small")
        save(fig, "roc.png", "ROC (test)")
    return made


def split_change_section(change: SplitChange | None) -> list[str]:
    """Markdown: the test split changed, and both models on the images they share ([] if it did not)."""
    if change is None:
        return []
    lines = ["### The test split changed", ""]
    moved = ""
    if change.only_base is not None:
        moved = f" ({change.only_candidate} only in this change's, {change.only_base} only in the base's)"
    lines.append(
        f"The base was tested on {change.base_n} images, this change on {change.candidate_n}{moved}: "
        "the metrics above compare different test sets."
    )
    lines.append("")
    if change.base is None or change.candidate is None:
        lines += ["_No per-image predictions on both sides to compare on the images both share._", ""]
        return lines
    rows = [
        [
            name,
            f"{change.base[key]:.4f}",
            f"{change.candidate[key]:.4f}",
            f"{change.candidate[key] - change.base[key]:+.4f}",
        ]
        for key, name in (("accuracy", "accuracy"), ("macro_f1", "macro F1"))
    ]
    lines += [
        f"On the {change.shared} test images both share:",
        "",
        _table(["metric", "base", "this change", "delta"], rows),
        "",
    ]
    return lines


def build_report(root: Path, base: str, out: Path, plots: bool = True) -> str:
    fix = "check that the base revision exists (`git fetch origin main` in CI)"
    metrics_diff = scm.dvc_json("metrics", "diff", base, "--all", cwd=root, fix=fix) or {}
    params_diff = scm.dvc_json("params", "diff", base, cwd=root, fix=fix) or {}
    candidate = read_metrics_file(root / EVALUATE_METRICS)
    base_metrics = read_metrics_at(base, root)
    parts = [
        f"## greenr: this change against `{base}`",
        "",
        "### Test metrics (`dvc metrics diff`)",
        "",
        metrics_table(metrics_diff),
        "",
        "### Parameters (`dvc params diff`)",
        "",
        params_table(params_diff),
        "",
        "### How sure are we?",
        "",
        intervals_table(base_metrics, candidate),
        "",
        f"> {NOISE_NOTE}",
        "",
    ]
    if base_metrics is not None:
        parts += split_change_section(split_change(root, base, base_metrics, candidate))
    train_path = root / TRAIN_METRICS
    parts += recipe_choice_section(
        _train_record(scm.show(base, TRAIN_METRICS, cwd=root)),
        _train_record(train_path.read_text(encoding="utf-8") if train_path.exists() else None),
    )
    if plots:
        made = render_plots(root, out.parent, base)
        if made:
            parts += ["### Plots", ""]
            parts += [f"![{title}]({name})" for title, name in made]
            parts.append("")
    return "\n".join(parts)


def write_report(base: str = "main", out: Path = Path("reports/pr.md"), plots: bool = True) -> Path:
    """Write the report (and its PNG plots beside it); return its path."""
    root = repo_root()
    out = out if out.is_absolute() else root / out
    text = build_report(root, base, out, plots=plots)
    with atomic_open(out, "w", encoding="utf-8") as handle:
        handle.write(text)
    return out
