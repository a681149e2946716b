"""The PR report on a real git + DVC repository with two commits of different metrics."""

from __future__ import annotations

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
