"""Batches of a prepared split (greenr.data.shards), streamed: no code path holds a whole split.

A split is a table of samples (shard file, offset and size of the JPEG, class, path), a few dozen
bytes per image. A plan cuts it into batches (in index order, or shuffled per epoch); worker
processes read and decode each batch (decoding under the GIL does not scale in threads), and the
DataLoader hands them over in plan order, so a run is the same for any number of workers.

Shuffling is bounded: the shards' order is shuffled, then the images within each window of
`SHUFFLE_SHARDS` consecutive shards, so reads stay local while every epoch has its own order.
Data-parallel ranks (torchrun) each read their own shards, or, with fewer shards than ranks,
every world-th image of the shuffled order: every image on exactly one rank per epoch. In index
order (no shuffle) the ranks take turns by whole batches, so each batch is a contiguous run of
positions on every rank (feature extraction writes it as one slice and seeds its augmentation by
position).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from greenr.data.shards import decode_member, read_index, split_dir
from greenr.errors import GreenrError
from greenr.hardware import available_cpus, release_free_memory
from greenr.paths import SHARDS_DIR

SHUFFLE_SHARDS = 8


@dataclass
class Samples:
    """Images of one or more prepared splits, readable by position; `labels` index `classes`."""

    root: Path  # the shards folder
    files: list[str]  # shard files, relative to root
    file_of: np.ndarray  # int32 (N,): index into files
    offsets: np.ndarray  # int64 (N,)
    sizes: np.ndarray  # int64 (N,)
    labels: np.ndarray  # int64 (N,)
    paths: list[str]
    classes: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: Sequence[int] | np.ndarray) -> Samples:
        """The images at `indices`, in that order."""
        pick = np.asarray(indices, dtype=np.int64)
        return Samples(
            self.root,
            self.files,
            self.file_of[pick],
            self.offsets[pick],
            self.sizes[pick],
            self.labels[pick],
            [self.paths[i] for i in pick.tolist()],
            self.classes,
        )

    @property
    def label_tensor(self) -> torch.Tensor:
        return torch.from_numpy(self.labels)


def load_samples(root: Path, splits: Sequence[str], classes: Sequence[str]) -> Samples:
    """The samples of `splits` (concatenated, in index order) from `root`/shards."""
    shards = root / SHARDS_DIR
    index = {name: i for i, name in enumerate(classes)}
    files: list[str] = []
    file_number: dict[str, int] = {}
    file_of, offsets, sizes, labels, paths = [], [], [], [], []
    for split in splits:
        folder = split_dir(shards, split)
        members = read_index(folder)
        if not members and not (folder / "index.csv").is_file():
            raise GreenrError(f"the {split} split has no prepared shards in {folder}", "run `dvc repro prepare`")
        for m in members:
            rel = f"{split}/{m.shard}"
            if rel not in file_number:
                file_number[rel] = len(files)
                files.append(rel)
            if m.label not in index:
                raise GreenrError(
                    f"{folder / 'index.csv'} has images of class {m.label!r}, not one of {list(classes)}",
                    "run `dvc repro` (split and prepare) so that shards and classes agree",
                )
            file_of.append(file_number[rel])
            offsets.append(m.offset)
            sizes.append(m.size)
            labels.append(index[m.label])
            paths.append(m.path)
    return Samples(
        shards,
        files,
        np.asarray(file_of, dtype=np.int32),
        np.asarray(offsets, dtype=np.int64),
        np.asarray(sizes, dtype=np.int64),
        np.asarray(labels, dtype=np.int64),
        paths,
        list(classes),
    )


def plan(
    samples: Samples,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    rank: int = 0,
    world: int = 1,
) -> list[np.ndarray]:
    """The positions of each batch this rank reads (see the module docstring)."""
    n = len(samples)
    order = np.arange(n)
    if shuffle and n:
        rng = np.random.default_rng([seed, epoch])
        by_file = np.argsort(samples.file_of, kind="stable")
        counts = np.bincount(samples.file_of, minlength=len(samples.files))
        starts = np.cumsum(counts) - counts
        files = np.flatnonzero(counts)
        shard_order = rng.permutation(files)
        rank_of_file = {int(f): i % world for i, f in enumerate(files)} if len(files) >= world else None
        chunks = []
        for start in range(0, len(shard_order), SHUFFLE_SHARDS):
            window = [int(f) for f in shard_order[start : start + SHUFFLE_SHARDS]]
            if rank_of_file is not None:
                window = [f for f in window if rank_of_file[f] == rank]
            if window:
                inside = np.concatenate([by_file[starts[f] : starts[f] + counts[f]] for f in window])
                chunks.append(inside[rng.permutation(len(inside))])
        order = np.concatenate(chunks) if chunks else order[:0]
        if rank_of_file is None and world > 1:
            order = order[rank::world]
    cut = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    if not shuffle and world > 1:
        return cut[rank::world]
    if shuffle and len(cut) > 1 and len(cut[-1]) == 1:
        # A training batch of one image cannot train BatchNorm: it joins the batch before it.
        cut[-2:] = [np.concatenate(cut[-2:])]
    return cut


@dataclass
class Batch:
    images: torch.Tensor  # uint8 (B, 3, S, S)
    labels: torch.Tensor  # int64 (B,)
    index: torch.Tensor  # int64 (B,): positions in the Samples

    def pin_memory(self) -> Batch:
        """Page-locked copies (the DataLoader's pin_memory thread calls this), for non_blocking copies."""
        return Batch(self.images.pin_memory(), self.labels.pin_memory(), self.index.pin_memory())


@dataclass
class _Decoded:
    """A decoded batch on its way from a worker process: the images in shared memory, labels and
    positions as NumPy arrays, which travel inside the message (a tensor would cost a shared-memory
    segment and a file descriptor of its own, per batch)."""

    images: torch.Tensor
    labels: np.ndarray
    index: np.ndarray

    def batch(self) -> Batch:
        return Batch(self.images, torch.from_numpy(self.labels), torch.from_numpy(self.index))

    def pin_memory(self) -> Batch:
        return self.batch().pin_memory()


@dataclass
class _Encoded:
    """A batch still JPEG-encoded (one uint8 tensor of bytes per image), for decoding on a GPU."""

    data: list[torch.Tensor]
    labels: torch.Tensor
    index: torch.Tensor


@dataclass
class _Failure:
    """What a worker process could not read: raised as a GreenrError in the main process (a raise in
    the worker would reach the user wrapped in the worker's traceback)."""

    what: str
    fix: str


class _BatchReader(Dataset[_Decoded | _Encoded | _Failure]):
    """Item i = batch i of a plan, read and decoded (in a DataLoader worker process), or only read
    (`encoded`: the JPEG bytes go to the GPU's decoder)."""

    def __init__(self, samples: Samples, batches: list[np.ndarray], image_size: int, encoded: bool = False) -> None:
        self.samples, self.batches, self.image_size, self.encoded = samples, batches, image_size, encoded
        self._handles: dict[int, int] = {}  # open file descriptors, per worker process

    def __len__(self) -> int:
        return len(self.batches)

    def _read(self, position: int) -> bytes:
        s = self.samples
        number = int(s.file_of[position])
        fd = self._handles.get(number)
        if fd is None:
            fd = self._handles[number] = os.open(s.root / s.files[number], os.O_RDONLY)
        return os.pread(fd, int(s.sizes[position]), int(s.offsets[position]))

    def __getitem__(self, i: int) -> _Decoded | _Encoded | _Failure:
        idx = self.batches[i]
        if self.encoded:
            labels, index = torch.from_numpy(self.samples.labels[idx]), torch.from_numpy(idx)
            try:
                data = [torch.frombuffer(bytearray(self._read(p)), dtype=torch.uint8) for p in idx.tolist()]
            except OSError as err:
                return _Failure(f"a shard of {self.samples.root} is unreadable ({err})", "`dvc repro -f prepare`")
            return _Encoded(data, labels, index)
        images = _batch_tensor((len(idx), 3, self.image_size, self.image_size))
        rows = images.numpy()
        for row, position in enumerate(idx.tolist()):
            try:
                decode_member(self._read(position), self.image_size, out=rows[row])
            except (OSError, ValueError) as err:
                return _Failure(
                    f"shard {self.samples.files[self.samples.file_of[position]]} is unreadable at "
                    f"{self.samples.paths[position]} ({err})",
                    "rebuild the shards: `dvc repro -f prepare` (or `dvc pull` them again)",
                )
        return _Decoded(images, self.samples.labels[idx], idx)

    def __del__(self) -> None:
        for fd in self._handles.values():
            try:
                os.close(fd)
            except OSError:
                pass


def _batch_tensor(shape: tuple[int, int, int, int]) -> torch.Tensor:
    """An uninitialised uint8 batch; in a DataLoader worker, in shared memory, so the decoded batch
    reaches the main process without the copy that sending it would otherwise make (torch's
    default_collate does the same)."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=torch.uint8)
    storage = torch.UntypedStorage._new_shared(math.prod(shape))
    return torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)


def loader_workers(batches: int) -> int:
    """Decoding processes: one per core, less a quarter of them on machines of 8 cores or more
    (GREENR_LOADER_WORKERS overrides); none for a couple of batches, where starting processes costs
    more than it saves."""
    cores = available_cpus()
    # The training process needs cores of its own to launch kernels and copy batches (measured on
    # a GPU machine: docs/scale.md, On a GPU).
    wanted = int(os.environ.get("GREENR_LOADER_WORKERS") or (cores - cores // 4 if cores >= 8 else cores))
    return 0 if batches <= 2 else min(wanted, batches)


def batches(
    samples: Samples,
    image_size: int,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    rank: int = 0,
    world: int = 1,
    pin_memory: bool = False,
    gpu_decode: torch.device | None = None,
) -> Iterator[Batch]:
    """The batches of `plan`, decoded in worker processes, in plan order; with `gpu_decode` (a CUDA
    device) the workers only read, and nvJPEG decodes each batch on that device."""
    planned = plan(samples, batch_size, shuffle, seed, epoch, rank, world)
    workers = loader_workers(len(planned))
    loader = DataLoader(
        _BatchReader(samples, planned, image_size, encoded=gpu_decode is not None),
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=4 if workers else None,
        collate_fn=_identity,
        # Its own generator: the loader draws its worker seeds there, not from torch's global
        # generator, which dropout and weight initialisation use: reading data changes no model.
        generator=torch.Generator().manual_seed(seed),
    )
    if workers:
        # Workers are forked: every heap page this process rewrites while they live is copied, the
        # workers keeping the old one. Pages glibc holds free would be rewritten by the next
        # allocations, so they go back to the OS first (docs/scale.md, memory).
        release_free_memory()
    for batch in loader:
        if isinstance(batch, _Failure):
            raise GreenrError(batch.what, batch.fix)
        if isinstance(batch, _Encoded):
            assert gpu_decode is not None
            yield Batch(decode_on_gpu(batch.data, image_size, gpu_decode), batch.labels, batch.index)
        elif isinstance(batch, _Decoded):
            yield batch.batch()
        else:
            yield batch  # pinned: the pin-memory thread made it a Batch


def decode_on_gpu(data: list[torch.Tensor], image_size: int, device: torch.device) -> torch.Tensor:
    """JPEG bytes -> uint8 (B, 3, S, S) on `device`, decoded by nvJPEG (resized where the shards hold
    another size, like greenr.data.shards.decode_member)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    out = torch.empty((len(images), 3, image_size, image_size), dtype=torch.uint8, device=device)
    for i, image in enumerate(images):
        if image.shape[-2:] != (image_size, image_size):
            short = min(image.shape[-2:])
            top, left = (image.shape[-2] - short) // 2, (image.shape[-1] - short) // 2
            square = image[:, top : top + short, left : left + short].float()[None]
            image = (
                torch.nn.functional.interpolate(
                    square, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False
                )[0]
                .round()
                .clamp(0, 255)
                .to(torch.uint8)
            )
        out[i] = image
    return out


def _identity(batch: Any) -> Any:
    return batch
