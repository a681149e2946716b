"""Frozen-backbone training: backbone features computed once per view, only the head trains.

With `train.finetune: frozen` the backbone never changes, so running it on every image in every
epoch repeats the same computation. Instead each training image is read once and embedded in all
its views in that pass (its centre crop, its mirror, and `train.feature_views` random augmentations
drawn with greenr.model.training.augment from a generator seeded per view and batch), the features
go to a float16 file on disk (memory-mapped, nanoGPT-style: a split never sits in RAM), and the
head trains for its epochs on them, one view per image per epoch, in seconds. Validation images are
embedded as they are (and flipped, for models that average test-time flips).

Under torchrun every rank embeds its own batches into the one shared file, so extraction scales
out; the features do not depend on the number of ranks (batches and their seeds are fixed blocks of
the split).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from greenr.data.images import FLIP_AXES, Preprocessing, flip_view
from greenr.data.loader import Samples, batches
from greenr.data.tensors import normalize
from greenr.errors import GreenrError
from greenr.model.architectures import get_arch
from greenr.model.inference import CPU_FORWARD_IMAGES
from greenr.model.training import (
    EpochKeeper,
    EpochStats,
    FitResult,
    augment,
    distributed_context,
    make_scheduler,
    part_optimizer,
)
from greenr.params import AugmentParams, TrainParams

log = logging.getLogger(__name__)

CENTRE, MIRROR = "centre", "hflip"  # names of greenr.data.images.FLIP_AXES
# Rows of features the head reads at once where it reads all views (validation, prediction).
HEAD_CHUNK = 4096
# Augmented views are drawn per block of this many images, each block from its own seeded
# generator: the features are then the same for any extraction batch size (a multiple) and rank count.
AUG_BLOCK = 64


def training_views(feature_views: int) -> list[str]:
    """The views of each training image: centre, mirror and `feature_views` augmentations."""
    return [CENTRE, MIRROR, *(f"aug{i}" for i in range(1, feature_views + 1))]


def view_generator(seed: int, view: str, block: int) -> torch.Generator:
    """The generator of an augmented view of one block of the split: the same for any rank count."""
    digest = hashlib.sha256(f"{seed}:{view}:{block}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)


def view_images(images: torch.Tensor, view: str, aug: AugmentParams, generator: torch.Generator | None) -> torch.Tensor:
    """float [0, 255] images of one view: a flip, or (`augN`) an augmentation drawn from `generator`."""
    if view in FLIP_AXES:
        return flip_view(images, view).float()
    if generator is None:
        raise ValueError(f"view {view} needs a generator")
    return augment(images, aug, generator)


def head_name(arch: str) -> str:
    return get_arch(arch).head_prefix.rstrip(".")


# The finetune settings that train on cached backbone outputs (this module) instead of images.
CACHED = ("frozen", "top")


def trainable_part(model: nn.Module, arch: str, finetune: str, image_size: int) -> nn.Module:
    """What trains on the cached outputs, sharing the model's modules: the head (frozen), or the top
    blocks with the head (top)."""
    if finetune == "top":
        split = get_arch(arch).split_top
        assert split is not None  # greenr.model.architectures.resolve_finetune checked it
        return split(model, image_size)[1]
    return getattr(model, head_name(arch))


@contextlib.contextmanager
def lower_part(model: nn.Module, arch: str, finetune: str, image_size: int) -> Iterator[nn.Module]:
    """What computes the cached outputs, in eval mode: images -> (B, F)."""
    if finetune != "top":
        with features_only(model, arch) as backbone:
            yield backbone
        return
    split = get_arch(arch).split_top
    assert split is not None
    yield split(model, image_size)[0].eval()


@contextlib.contextmanager
def features_only(model: nn.Module, arch: str) -> Iterator[nn.Module]:
    """The model with its head taken out (it then returns the pooled features), in eval mode."""
    name = head_name(arch)
    head = getattr(model, name)
    setattr(model, name, nn.Identity())
    try:
        yield model.eval()
    finally:
        setattr(model, name, head)


@dataclass
class FeatureBank:
    """Features (N, V, F) float16 of N images in V views, in a .npy file; `rows` picks a subset.

    Each read maps the file for that read only: a mapping kept open counts every page it has read
    in this process's RSS, so the train stage's peak memory grew with the file, about 190 KB per
    training image with `top`'s activations (nanoGPT re-creates its np.memmap per batch for the
    same reason; docs/scale.md). The pages stay in the kernel's page cache either way."""

    path: Path
    views: list[str]
    rows: np.ndarray | None = None  # positions in the file (None: all, in order)
    count: int = field(init=False)  # images in this bank

    def __post_init__(self) -> None:
        self.count = len(self.array) if self.rows is None else len(self.rows)

    @property
    def array(self) -> np.ndarray:
        """The whole file, memory-mapped read-only: index it and let it go."""
        return np.load(self.path, mmap_mode="r")

    def __len__(self) -> int:
        return self.count

    def subset(self, indices: np.ndarray) -> FeatureBank:
        base = np.arange(self.count) if self.rows is None else self.rows
        return FeatureBank(self.path, self.views, base[np.asarray(indices, dtype=np.int64)])

    def take(self, positions: np.ndarray, views: np.ndarray | None = None) -> torch.Tensor:
        """float32 features of the images at `positions` (of this bank): (n, F) of one view each
        (`views`), or (n, V, F)."""
        rows = positions if self.rows is None else self.rows[positions]
        order = np.argsort(rows, kind="stable")  # ascending reads from the file
        array = self.array
        picked = array[rows[order]] if views is None else array[rows[order], views[order]]
        out = np.empty_like(picked)
        out[order] = picked
        return torch.from_numpy(out.astype(np.float32))


@contextlib.contextmanager
def cached_outputs(
    model: nn.Module, arch: str, finetunes: Sequence[str], image_size: int
) -> Iterator[Callable[[torch.Tensor], list[torch.Tensor]]]:
    """images -> what each of `finetunes` trains on, (B, F) each, from one backbone pass in eval
    mode: with `top` the lower blocks run once, and the frozen recipe's features are the top
    blocks' pooled output of those same activations (what the whole backbone computes, bit for bit)."""
    if "top" not in finetunes:
        with lower_part(model, arch, "frozen", image_size) as backbone:
            yield lambda x: [backbone(x)] * len(finetunes)
        return
    split = get_arch(arch).split_top
    assert split is not None  # greenr.model.architectures.resolve_finetune checked it
    training = model.training
    lower, top = (part.eval() for part in split(model, image_size))
    try:

        def run(x: torch.Tensor) -> list[torch.Tensor]:
            outputs = {"top": lower(x)}
            if "frozen" in finetunes:
                outputs["frozen"] = top.pooled(outputs["top"])  # type: ignore[operator]
            return [outputs[finetune] for finetune in finetunes]

        yield run
    finally:
        model.train(training)


@torch.inference_mode()
def extract(
    model: nn.Module,
    arch: str,
    samples: Samples,
    spec: Preprocessing,
    views: list[str],
    aug: AugmentParams,
    seed: int,
    device: torch.device,
    outputs: Mapping[str, Path],
    batch_size: int = 256,
    bf16: bool = False,
    gpu_decode: bool = False,
) -> dict[str, FeatureBank]:
    """What each finetune setting in `outputs` (frozen, top) trains on, for every image of `samples`
    in every view, written to its path (float16, (N, V, F)).

    One pass over the images: each batch is read and decoded once (by nvJPEG with `gpu_decode` on
    a CUDA device) and embedded in every view, for every output at once.
    Under torchrun each rank embeds its share of the batches into the same files."""
    if batch_size % AUG_BLOCK:
        raise ValueError(f"the extraction batch size must be a multiple of {AUG_BLOCK}, got {batch_size}")
    rank, world = distributed_context()
    finetunes = list(outputs)
    with cached_outputs(model.to(device), arch, finetunes, spec.image_size) as backbone:
        probe = torch.zeros(1, 3, spec.image_size, spec.image_size, dtype=torch.uint8, device=device)
        dims = [int(out.shape[-1]) for out in backbone(normalize(probe, spec))]
        if rank == 0:
            for path, dim in zip(outputs.values(), dims, strict=True):
                path.parent.mkdir(parents=True, exist_ok=True)
                shape = (len(samples), len(views), dim)
                np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=shape).flush()
        if world > 1:
            dist.barrier()
        # Written with pwrite, not through a mapping: the rows written stay out of this process's RSS.
        files = [_RowWriter(path) for path in outputs.values()]
        started = last = time.perf_counter()
        done = 0
        cuda = device.type == "cuda"
        chunk = batch_size if cuda else CPU_FORWARD_IMAGES
        stream = batches(
            samples,
            spec.image_size,
            batch_size,
            rank=rank,
            world=world,
            pin_memory=cuda and not gpu_decode,
            gpu_decode=device if cuda and gpu_decode else None,
        )
        for batch in stream:
            x = batch.images.to(device, non_blocking=True)
            first = int(batch.index[0])
            feats: list[list[torch.Tensor]] = [[] for _ in files]  # per output, per view
            for view in views:
                if view in FLIP_AXES:
                    images = view_images(x, view, aug, None)
                else:
                    images = torch.cat(
                        [
                            view_images(
                                x[j : j + AUG_BLOCK], view, aug, view_generator(seed, view, (first + j) // AUG_BLOCK)
                            )
                            for j in range(0, len(x), AUG_BLOCK)
                        ]
                    )
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    parts = [backbone(normalize(part, spec)) for part in images.split(chunk)]
                for k, per_view in enumerate(feats):
                    per_view.append(torch.cat([part[k] for part in parts]))
            index = batch.index.numpy()
            for out, per_view in zip(files, feats, strict=True):
                out.write(int(index[0]), torch.stack(per_view, 1).to(torch.float16).cpu().numpy())
            done += len(index)
            if time.perf_counter() - last > 30:  # the backbone passes are the slow part: say how far
                last = time.perf_counter()
                log.info(
                    "features: %d/%d images x %d views (%.0f images/s)",
                    done * world,
                    len(samples),
                    len(views),
                    done / (last - started),
                )
        for out in files:
            out.close()
        if world > 1:
            dist.barrier()
    seconds = time.perf_counter() - started
    log.info(
        "%s features of %d images x %d views in %.1f s (%.0f images/s, %.0f forward passes/s)",
        " and ".join(finetunes),
        len(samples),
        len(views),
        seconds,
        len(samples) / max(seconds, 1e-9),
        len(samples) * len(views) / max(seconds, 1e-9),
    )
    return {finetune: FeatureBank(path, views) for finetune, path in outputs.items()}


class _RowWriter:
    """Consecutive rows written into an existing .npy file at their place (`write(first, rows)`)."""

    def __init__(self, path: Path) -> None:
        header = np.load(path, mmap_mode="r")
        self.offset, self.row_bytes = header.offset, header[0].nbytes if len(header) else 0
        del header
        self.fd = os.open(path, os.O_WRONLY)

    def write(self, first: int, rows: np.ndarray) -> None:
        data = np.ascontiguousarray(rows).reshape(-1).view(np.uint8).data  # bytes, sliceable, no copy
        written = 0
        while written < len(data):  # pwrite may write less than asked
            written += os.pwrite(self.fd, data[written:], self.offset + first * self.row_bytes + written)

    def close(self) -> None:
        os.close(self.fd)


def head_logits(head: nn.Module, bank: FeatureBank) -> torch.Tensor:
    """Mean logits over each image's views -> (N, C): one view, or an image and its flips."""
    out = []
    rows = getattr(head, "chunk_rows", HEAD_CHUNK)
    for start in range(0, len(bank), rows):
        feats = bank.take(np.arange(start, min(start + rows, len(bank))))
        out.append(head(feats.flatten(0, 1)).view(feats.shape[0], feats.shape[1], -1).mean(1))
    return torch.cat(out) if out else torch.empty(0, 0)


@contextlib.contextmanager
def denormals_flushed() -> Iterator[None]:
    """Denormal floats read and written as zero (x86 DAZ/FTZ) while a head trains: once the training
    loss nears zero, backward passes make gradients in the denormal range, which the CPU computes
    several times slower (`top` on 7,000 images: 12 s epochs became 40 s; 17 s flushed; the same
    losses. docs/scale.md)."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


@denormals_flushed()
def fit_head(
    model: nn.Module,
    head: nn.Module,
    train: FeatureBank,
    train_labels: torch.Tensor,
    val: FeatureBank,
    val_labels: torch.Tensor,
    params: TrainParams,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> FitResult:
    """Train `head`, the model's trainable part (trainable_part), on cached features; validation
    picks the epoch like `fit` does. The rest of the model does not change.

    `train` (N images, V views): every epoch visits the N images in a seeded order, each through
    one of its V views drawn at random. `val` (M images, 1, 2 or 4 views): the images (and flips).
    """
    head.cpu()
    n, views = len(train), len(train.views)
    if n == 0:
        raise GreenrError("no training images to train the head on", "check splits/train.csv (`dvc repro split`)")
    optimizer = part_optimizer(model, head, params)
    scheduler = make_scheduler(optimizer, params, math.ceil(n / params.batch_size))
    generator = torch.Generator().manual_seed(params.seed)
    keeper = EpochKeeper(head, params.select)
    for epoch in range(1, params.epochs + 1):
        started = time.perf_counter()
        head.train()
        # BatchNorm keeps the released statistics: batches of one view of a few dozen images estimate
        # them worse than ImageNet did, and evaluation would then see other statistics than training.
        for module in head.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        order = torch.randperm(n, generator=generator).numpy()
        pick = torch.randint(0, views, (n,), generator=generator).numpy()
        total_loss, correct = 0.0, 0
        for start in range(0, n, params.batch_size):
            idx = order[start : start + params.batch_size]
            labels = train_labels[idx]
            logits = head(train.take(idx, pick[idx]))
            loss = F.cross_entropy(logits, labels, label_smoothing=params.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total_loss += loss.item() * len(idx)
            correct += int((logits.argmax(1) == labels).sum())
        head.eval()
        with torch.no_grad():
            val_logits = head_logits(head, val)
        val_loss = F.cross_entropy(val_logits, val_labels).item() if len(val_labels) else math.nan
        val_acc = (val_logits.argmax(1) == val_labels).float().mean().item() if len(val_labels) else math.nan
        seconds = time.perf_counter() - started
        stats = EpochStats(epoch, total_loss / n, correct / n, val_loss, val_acc, seconds, n / max(seconds, 1e-9))
        keeper.add(stats)
        if on_epoch:
            on_epoch(stats)
    return keeper.result(model)
