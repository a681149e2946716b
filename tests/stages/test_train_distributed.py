"""The train stage under torchrun (2 CPU processes, gloo) on the shards: the default frozen recipe
extracts its features on both ranks and gives the metrics of a single-process run."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from greenr.processes import free_port
from tests.helpers.images import make_images
from tests.helpers.project import copy_project, project_env, run, set_params

PARAMS = {
    "model": {"image_size": 64},
    "train": {"epochs": 10, "feature_views": 2},
    "prepare": {"shard_images": 6},  # several shards: each rank reads its own
    "evaluate": {"bootstrap_samples": 200},
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = copy_project(tmp_path_factory.mktemp("ddp") / "p")
    for label in ("dandelion", "grass"):
        make_images(root / "data" / label, label, 20, 64)
    set_params(root, PARAMS)
    env = project_env(root, root.parent / "state") | {"OMP_NUM_THREADS": "1"}
    for stage in ("split", "prepare"):
        run([sys.executable, "-m", f"stages.{stage}"], root, env)
    return root, env


def train_and_evaluate(root: Path, env: dict[str, str], command: list[str]) -> tuple[dict, dict]:
    result = run(command, root, env)
    assert "wrote models/stage-1.pth" in result.stderr
    run([sys.executable, "-m", "stages.evaluate"], root, env)
    train = json.loads((root / "metrics" / "train.json").read_text())
    return train, json.loads((root / "metrics" / "evaluate.json").read_text())


def test_two_processes_give_the_metrics_of_one(project: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    root, env = project
    one, single = train_and_evaluate(root, env, [sys.executable, "-m", "stages.train"])
    shutil.rmtree(root / "models")
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc-per-node=2",
        "--master-addr=127.0.0.1",
        f"--master-port={free_port()}",
        "-m",
        "stages.train",
    ]
    train, double = train_and_evaluate(root, env, torchrun)
    # finetune auto: every rank trains every candidate; the choice is the single process's
    assert train["finetune_auto"]["tried"].keys() == {"frozen", "top"}
    assert train["finetune"] == one["finetune"]
    low, high = single["bootstrap"]["accuracy"]
    assert low <= double["accuracy"] <= high, (single, double)
    low, high = single["bootstrap"]["macro_f1"]
    assert low <= double["macro"]["f1"] <= high
    # The extracted features do not depend on the number of ranks, nor does the head's training:
    # the two runs give the same test predictions.
    assert double["confusion_matrix"] == single["confusion_matrix"]
    assert not list((root.parent / "state").glob("features-*")), "the shared feature folder is removed"
