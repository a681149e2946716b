"""The PR report on a real git + DVC repository with two commits of different metrics."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from markdown_it import MarkdownIt
from PIL import Image

from tests.helpers.project import REPO, VENV_BIN, evaluate_metrics, git, run


def _write_plots(root: Path) -> None:
    plots = root / "plots"
    (plots / "evaluate").mkdir(parents=True)
    (plots / "training.csv").write_text(
        "epoch,train_loss,train_acc,val_loss,val_acc\n1,0.9,0.6,0.8,0.65\n2,0.5,0.8,0.4,0.85\n"
    )
    rows = (
        ["path,actual,predicted"]
        + [f"data/d/{i}.jpg,dandelion,dandelion" for i in range(5)]
        + ["data/g/0.jpg,grass,dandelion", "data/g/1.jpg,grass,grass"]
    )
    (plots / "evaluate" / "confusion.csv").write_text("\n".join(rows) + "\n")
    (plots / "evaluate" / "roc").mkdir()
    (plots / "evaluate" / "roc" / "dandelion.csv").write_text("fpr,tpr,threshold\n0,0,1\n0.1,0.8,0.5\n1,1,0\n")


def test_report_has_right_deltas_and_is_valid_markdown(metrics_repo, env_for) -> None:
    root = metrics_repo(
        evaluate_metrics(0.90, 0.88, (0.82, 0.96)),
        evaluate_metrics(0.95, 0.94, (0.88, 0.99)),
        params_change={"train": {"lr": 0.0003}},
    )
    _write_plots(root)
    run([str(VENV_BIN / "greenr"), "report", "--base", "HEAD~1", "--out", "reports/pr.md"], root, env_for(root))
    text = (root / "reports" / "pr.md").read_text()
    assert "| metrics/evaluate.json | accuracy | 0.9000 | 0.9500 | +0.0500 |" in text
    assert "| metrics/evaluate.json | macro.f1 | 0.8800 | 0.9400 | +0.0600 |" in text
    base_lr = yaml.safe_load((REPO / "params.yaml").read_text())["train"]["lr"]  # the base commit's
    assert base_lr != 0.0003 and f"| params.yaml | train.lr | {base_lr} | 0.0003 |" in text
    assert "| accuracy | 0.9000 | [0.820, 0.960] | 0.9500 | [0.880, 0.990] |" in text
    assert "noisy" in text
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    assert sum(t.type == "table_open" for t in tokens) == 3
    images = [c.attrs["src"] for t in tokens if t.type == "inline" for c in t.children or [] if c.type == "image"]
    assert images == ["training.png", "confusion.png", "roc.png"]
    for name in images:
        assert (root / "reports" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_shows_the_rows_of_a_class_added_since_the_base(metrics_repo, env_for) -> None:
    candidate = evaluate_metrics(0.93, 0.92)
    candidate["per_class"]["clover"] = {"precision": 0.9, "recall": 0.8, "f1": 0.847, "support": 10}
    for row in candidate["confusion_matrix"].values():
        row["clover"] = 0
    candidate["confusion_matrix"]["clover"] = {"dandelion": 1, "grass": 1, "clover": 8}
    root = metrics_repo(evaluate_metrics(0.90, 0.88), candidate)
    run([str(VENV_BIN / "greenr"), "report", "--base", "HEAD~1", "--no-plots"], root, env_for(root))
    text = (root / "reports" / "pr.md").read_text()
    assert "| metrics/evaluate.json | per_class.clover.f1 | – | 0.8470 |" in text
    assert "| metrics/evaluate.json | per_class.dandelion.f1 |" in text
    assert "confusion_matrix" not in text  # matrices are a plot, not 9 table rows


def test_report_with_a_missing_base_is_a_clear_error(metrics_repo, env_for) -> None:
    root = metrics_repo(evaluate_metrics(0.90, 0.88), evaluate_metrics(0.95, 0.94))
    done = run(
        [str(VENV_BIN / "greenr"), "report", "--base", "no-such-rev", "--no-plots"], root, env_for(root), check=False
    )
    assert done.returncode == 2
    assert "fix:" in done.stderr and "Traceback" not in done.stderr


def test_report_plots_put_the_base_beside_this_change(metrics_repo, env_for) -> None:
    root = metrics_repo(evaluate_metrics(0.90, 0.88), evaluate_metrics(0.95, 0.94))
    _write_plots(root)
    git(root, "add", "plots")
    git(root, "commit", "-qm", "plots")
    (root / "plots" / "evaluate" / "roc" / "dandelion.csv").write_text(
        "fpr,tpr,threshold\n0,0,1\n0.05,0.9,0.5\n1,1,0\n"
    )

    def report(base: str) -> tuple[str, dict[str, tuple[int, int]]]:
        out = root / "reports" / base.replace("~", "-")
        run([str(VENV_BIN / "greenr"), "report", "--base", base, "--out", str(out / "pr.md")], root, env_for(root))
        return (out / "pr.md").read_text(), {
            name: Image.open(out / name).size for name in ("training.png", "confusion.png", "roc.png")
        }

    with_base, sizes = report("HEAD")  # the base has plots too: both are drawn
    alone_text, alone = report("HEAD~1")  # the base has none: this change only
    assert "Training curves (dashed: base)" in with_base
    assert "dashed: base" not in alone_text
    assert sizes["confusion.png"][0] > 1.6 * alone["confusion.png"][0]  # two matrices side by side


def _train_record(picked: str, losses: dict[str, float]) -> str:
    """metrics/train.json as the train stage writes it under `finetune: auto` (budget 3)."""
    record = {
        "finetune": picked,
        "finetune_auto": {
            "budget": 3.0,
            "by": "the cheapest within one standard error of the lowest validation log loss",
            "estimated_cost": {"discriminative": 9.0, "frozen": 1.0, "full": 9.0, "top": 1.16},
            "over_budget": ["discriminative", "full"],
            "picked": picked,
            "tried": {s: {"val_acc": 0.9, "val_loss": loss} for s, loss in losses.items()},
        },
    }
    return json.dumps(record, indent=2)


def test_report_shows_the_recipe_auto_kept_and_its_evidence_beside_the_base(metrics_repo, env_for) -> None:
    root = metrics_repo(evaluate_metrics(0.90, 0.88), evaluate_metrics(0.95, 0.94))
    train_json = root / "metrics" / "train.json"
    train_json.write_text(_train_record("frozen", {"frozen": 0.1016, "top": 0.1959}))
    git(root, "add", "metrics/train.json")
    git(root, "commit", "-qm", "base train record")
    train_json.write_text(_train_record("top", {"frozen": 0.2500, "top": 0.1250}))
    run([str(VENV_BIN / "greenr"), "report", "--base", "HEAD", "--no-plots"], root, env_for(root))
    text = (root / "reports" / "pr.md").read_text()
    assert "### Recipe choice (`train.finetune: auto`)" in text
    assert "Kept `top` (the base kept `frozen`)" in text and "`train.budget` = 3.0" in text
    assert "| `frozen` | 1.00 | 0.1016 | 0.2500 | val acc 0.9000 |" in text
    assert "| `top` (kept) | 1.16 | 0.1959 | 0.1250 | val acc 0.9000 |" in text
    assert "| `discriminative` | 9.00 | – | – | over budget |" in text


def test_report_has_no_recipe_section_when_auto_did_not_choose(metrics_repo, env_for) -> None:
    root = metrics_repo(evaluate_metrics(0.90, 0.88), evaluate_metrics(0.95, 0.94))
    (root / "metrics" / "train.json").write_text(json.dumps({"finetune": "full", "val_loss": 0.3}))
    run([str(VENV_BIN / "greenr"), "report", "--base", "HEAD", "--no-plots"], root, env_for(root))
    assert "Recipe choice" not in (root / "reports" / "pr.md").read_text()
