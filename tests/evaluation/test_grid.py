"""The grid helper: dvc command lines and picking the best experiment from `dvc exp show --json`."""

from __future__ import annotations

import re

from greenr.evaluation.grid import KEEP, best_experiment, queue_argv, show_argv


def _state(rev: str, name: str | None, accuracy: float | None) -> dict:
    metrics = (
        {}
        if accuracy is None
        else {"metrics/evaluate.json": {"data": {"accuracy": accuracy, "macro": {"f1": accuracy - 0.01}}}}
    )
    return {
        "rev": rev,
        "name": name,
        "data": {"rev": rev, "metrics": metrics, "params": {}},
        "error": None,
        "experiments": None,
    }


def test_best_experiment_picks_the_highest_test_metric() -> None:
    shown = [
        _state("workspace", None, 0.70),
        {
            **_state("abc123", "main", 0.80),
            "experiments": [
                {"name": "lite-frozen", "executor": None, "revs": [_state("e1", "lite-frozen", 0.95)]},
                {"name": "resnet-scratch", "executor": None, "revs": [_state("e2", "resnet-scratch", 0.88)]},
                {"name": "queued", "executor": {"state": "queued"}, "revs": [_state("e3", "queued", None)]},
            ],
        },
    ]
    assert best_experiment(shown) == ("lite-frozen", 0.95)
    assert best_experiment(shown, "macro.f1") == ("lite-frozen", 0.94)
    assert best_experiment([_state("workspace", None, 0.7)]) is None


def test_queue_and_show_command_lines() -> None:
    assert queue_argv(["model.arch=resnet18,efficientnet_lite0", "train.lr=0.001,0.0003"]) == [
        "exp",
        "run",
        "--queue",
        "-S",
        "model.arch=resnet18,efficientnet_lite0",
        "-S",
        "train.lr=0.001,0.0003",
    ]
    argv = show_argv("main", "accuracy")
    assert argv[argv.index("--sort-by") + 1] == "metrics/evaluate.json:accuracy"
    assert argv[argv.index("--rev") + 1] == "main"
    keep = re.compile(argv[argv.index("--keep") + 1])
    for column in KEEP:
        assert keep.search(column) and keep.search(f"metrics/evaluate.json:{column}")
    assert not keep.search("log_loss") and not keep.search("train.augment.hflip")
