"""Streaming batches from the shards: every image once per epoch, the same batches for any number of
worker processes, seeded shuffles within bounded windows, disjoint rank shares."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from greenr.data.loader import SHUFFLE_SHARDS, Samples, batches, plan
from greenr.errors import GreenrError
from tests.helpers.shards import write_arrays

N = 50


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Samples:
    """50 images in shards of 4, each stamped with its index (a flat 8x8 block of grey 4 * i)."""
    root = tmp_path_factory.mktemp("loader")
    images = np.random.default_rng(0).integers(0, 256, (N, 3, 16, 16), dtype=np.uint8)
    images[:, :, :8, :8] = (np.arange(N, dtype=np.uint8) * 4)[:, None, None, None]
    return write_arrays(root, "train", images, ["a" if i % 3 else "b" for i in range(N)], ["a", "b"], shard_images=4)


def stamps(batch_images: torch.Tensor) -> list[int]:
    return (batch_images[:, 0, 0, 0].float() / 4).round().int().tolist()


def test_batches_in_order_carry_their_images_labels_and_positions(samples: Samples) -> None:
    seen = []
    for batch in batches(samples, 16, 8):
        assert batch.images.dtype == torch.uint8 and batch.images.shape[1:] == (3, 16, 16)
        assert stamps(batch.images) == batch.index.tolist()
        assert batch.labels.tolist() == samples.labels[batch.index.numpy()].tolist()
        seen += batch.index.tolist()
    assert seen == list(range(N))


@pytest.mark.parametrize("workers", ["0", "1", "2"])
def test_a_shuffled_epoch_is_the_same_for_any_number_of_workers(
    samples: Samples, workers: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GREENR_LOADER_WORKERS", workers)
    order = [i for b in batches(samples, 16, 8, shuffle=True, seed=3, epoch=2) for i in stamps(b.images)]
    expected = np.concatenate(plan(samples, 8, shuffle=True, seed=3, epoch=2)).tolist()
    assert order == expected and sorted(order) == list(range(N))


def test_shuffles_differ_per_epoch_and_stay_within_windows_of_shards(samples: Samples) -> None:
    one = np.concatenate(plan(samples, 8, True, seed=3, epoch=1))
    two = np.concatenate(plan(samples, 8, True, seed=3, epoch=2))
    assert sorted(one) == sorted(two) == list(range(N)) and not np.array_equal(one, two)
    assert np.array_equal(one, np.concatenate(plan(samples, 8, True, seed=3, epoch=1)))
    # Each window of SHUFFLE_SHARDS shards (of 4 images; one holds 2) is read before the next starts,
    # its images in a shuffled order.
    first_window_shards = {int(samples.file_of[i]) for i in one[: 4 * SHUFFLE_SHARDS - 2]}
    assert len(first_window_shards) == SHUFFLE_SHARDS


@pytest.mark.parametrize("world", [2, 3, 20])
def test_ranks_read_disjoint_shares_that_cover_the_epoch(samples: Samples, world: int) -> None:
    shares = [np.concatenate(plan(samples, 4, True, seed=1, epoch=0, rank=r, world=world)) for r in range(world)]
    assert sorted(np.concatenate(shares).tolist()) == list(range(N))
    if world <= 13:  # as many shards as ranks or more: each rank reads whole shards of its own
        files = [{int(samples.file_of[i]) for i in share} for share in shares]
        assert all(not (files[a] & files[b]) for a in range(world) for b in range(a + 1, world))


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_take_turns_by_whole_batches_in_index_order(samples: Samples, world: int) -> None:
    # Feature extraction writes each batch as one slice and seeds augmentation by position.
    shares = [plan(samples, 8, rank=r, world=world) for r in range(world)]
    for share in shares:
        assert all(np.array_equal(b, np.arange(b[0], b[0] + len(b))) for b in share)
    assert sorted(np.concatenate([np.concatenate(s) for s in shares]).tolist()) == list(range(N))


def test_a_lone_image_joins_the_last_training_batch(samples: Samples) -> None:
    sizes = [len(b) for b in plan(samples.subset(range(9)), 4, shuffle=True)]
    assert sizes == [4, 5]  # a batch of one cannot train BatchNorm
    assert [len(b) for b in plan(samples.subset(range(9)), 4)] == [4, 4, 1]  # not for inference


def test_a_missing_or_damaged_shard_is_a_clear_error(samples: Samples, tmp_path: Path) -> None:
    from greenr.data.loader import load_samples

    with pytest.raises(GreenrError, match="dvc repro prepare"):
        load_samples(tmp_path, ["train"], ["a", "b"])
    broken = write_arrays(tmp_path, "val", np.zeros((3, 3, 8, 8), dtype=np.uint8), ["a", "b", "a"], ["a", "b"])
    (tmp_path / "shards" / "val" / "000000.tar").write_bytes(b"\0" * 100)
    with pytest.raises(GreenrError, match="unreadable"):
        list(batches(broken, 8, 2))
    with pytest.raises(GreenrError, match="not one of"):
        load_samples(tmp_path, ["val"], ["x", "y"])


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="nvJPEG needs a CUDA device (bench/gpu_check.py on the device tool)"
)
def test_gpu_decoding_agrees_with_cpu_decoding(samples: Samples) -> None:
    cuda = torch.device("cuda")
    on_cpu = list(batches(samples, 16, 16))
    on_gpu = list(batches(samples, 16, 16, gpu_decode=cuda))
    assert [b.index.tolist() for b in on_gpu] == [b.index.tolist() for b in on_cpu]
    diff = torch.cat([(g.images.cpu().int() - c.images.int()).abs() for g, c in zip(on_gpu, on_cpu, strict=True)])
    print(f"nvJPEG vs libjpeg: max |diff| {int(diff.max())}, mean {float(diff.float().mean()):.3f}")
    # Both decode the same JPEG; IDCT implementations differ by rounding only.
    assert int(diff.max()) <= 8 and float(diff.float().mean()) <= 0.5
