"""Data-parallel training: 2 CPU processes under torchrun (gloo) train one model together."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from greenr.processes import free_ports
from tests.helpers.project import REPO
from tests.model.ddp_worker import N_TRAIN


@pytest.mark.parametrize("shard_images", [1000, 4])
def test_two_ranks_train_one_model(tmp_path, shard_images: int) -> None:
    """One shard: the ranks split it image by image; six shards: each rank reads its own shards."""
    (port,) = free_ports()
    env = os.environ | {"GREENR_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=1",
            "--nproc-per-node=2",
            "--master-addr=127.0.0.1",
            f"--master-port={port}",
            str(REPO / "tests/model/ddp_worker.py"),
            str(tmp_path),
            str(shard_images),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    # one model: identical weights and identical reported history on every rank
    assert ranks[0]["sha256"] == ranks[1]["sha256"]
    assert ranks[0]["history"] == ranks[1]["history"]
    # every epoch covers the whole training split exactly once, split between the ranks
    epochs = 2
    per_rank = [r["seen"] for r in ranks]
    assert sum(len(s) for s in per_rank) == epochs * N_TRAIN
    for rank_seen in per_rank:
        assert rank_seen, "a rank trained on nothing"
    shard_sizes = [len(s) // epochs for s in per_rank]
    # 21 images: one shard split image by image (10 + 11), or shards of 4 dealt in turn (12 + 9).
    assert sorted(shard_sizes) == ([N_TRAIN // 2, N_TRAIN - N_TRAIN // 2] if shard_images > N_TRAIN else [9, 12])
    for epoch in range(epochs):
        epoch_seen = []
        for rank_seen, size in zip(per_rank, shard_sizes, strict=True):
            epoch_seen += rank_seen[epoch * size : (epoch + 1) * size]
        assert sorted(epoch_seen) == list(range(N_TRAIN)), f"epoch {epoch + 1} did not cover the split once"
