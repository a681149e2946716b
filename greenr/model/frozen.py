"""Frozen-backbone training: backbone features computed once per view, only the head trains.

With `train.finetune: frozen` the backbone never changes, so running it on every image in every
epoch repeats the same computation. Instead each training image is embedded once per view (its
centre crop, its mirror, and `train.feature_views` random augmentations drawn with
greenr.model.training.augment from generators seeded per view), and the head trains for its
epochs on those features, one view per image per epoch, in seconds. Validation images are
embedded as they are (and flipped, for models that average test-time flips).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from greenr.data.images import FLIP_AXES, Preprocessing, flip_view
from greenr.data.tensors import normalize
from greenr.errors import GreenrError
from greenr.model.architectures import get_arch
from greenr.model.training import EpochKeeper, EpochStats, FitResult, augment, make_optimizer, make_scheduler
from greenr.params import AugmentParams, TrainParams

log = logging.getLogger(__name__)

CENTRE, MIRROR = "centre", "hflip"  # names of greenr.data.images.FLIP_AXES


def training_views(feature_views: int) -> list[str]:
    """The views of each training image: centre, mirror and `feature_views` augmentations."""
    return [CENTRE, MIRROR, *(f"aug{i}" for i in range(1, feature_views + 1))]


def view_images(images: torch.Tensor, view: str, aug: AugmentParams, seed: int) -> torch.Tensor:
    """float [0, 255] images of one view; `augN` is reproducible (its own seeded generator)."""
    if view in FLIP_AXES:
        return flip_view(images, view).float()
    generator = torch.Generator().manual_seed(seed * 1000 + int(view.removeprefix("aug")))
    return augment(images, aug, generator)


def head_name(arch: str) -> str:
    return get_arch(arch).head_prefix.rstrip(".")


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


@torch.inference_mode()
def extract(
    model: nn.Module,
    arch: str,
    images: torch.Tensor,
    spec: Preprocessing,
    views: list[str],
    aug: AugmentParams,
    seed: int,
    device: torch.device,
    batch_size: int = 32,
    bf16: bool = False,
) -> torch.Tensor:
    """Features (V, N, F) on the CPU of uint8 images (N, 3, S, S), one row per view."""
    out = []
    with features_only(model.to(device), arch) as backbone:
        for number, view in enumerate(views, 1):
            started = time.perf_counter()
            x = view_images(images, view, aug, seed)
            chunks = []
            for start in range(0, len(x), batch_size):
                batch = normalize(x[start : start + batch_size].to(device), spec)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    chunks.append(backbone(batch).float().cpu())
            out.append(torch.cat(chunks) if chunks else torch.empty(0, 0))
            # The backbone passes are the slow part of a frozen run; say how far they are.
            log.info(
                "features of %d images, view %d/%d (%s): %.1f s",
                len(x),
                number,
                len(views),
                view,
                time.perf_counter() - started,
            )
    return torch.stack(out)


def head_logits(head: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """Mean logits over the views (V, N, F) -> (N, C): one view, or an image and its flips."""
    return torch.stack([head(v) for v in features]).mean(0)


def fit_head(
    model: nn.Module,
    arch: str,
    train_views: torch.Tensor,
    train_labels: torch.Tensor,
    val_views: torch.Tensor,
    val_labels: torch.Tensor,
    params: TrainParams,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> FitResult:
    """Train the model's head on cached features; validation picks the epoch like `fit` does.

    `train_views` (V, N, F): every epoch visits the N images in a seeded order, each through one
    of its V views drawn at random. `val_views` (1, 2 or 4, M, F): the images (and their flips).
    """
    head = getattr(model, head_name(arch))
    head.cpu()
    views, n, _ = train_views.shape
    if n == 0:
        raise GreenrError("no training images to train the head on", "check splits/train.csv (`dvc repro split`)")
    optimizer = make_optimizer(model, arch, params)  # finetune is frozen: the head's parameters only
    scheduler = make_scheduler(optimizer, params, math.ceil(n / params.batch_size))
    generator = torch.Generator().manual_seed(params.seed)
    keeper = EpochKeeper(head, params.select)
    for epoch in range(1, params.epochs + 1):
        started = time.perf_counter()
        head.train()
        order = torch.randperm(n, generator=generator)
        pick = torch.randint(0, views, (n,), generator=generator)
        total_loss, correct = 0.0, 0
        for start in range(0, n, params.batch_size):
            idx = order[start : start + params.batch_size]
            logits = head(train_views[pick[idx], idx])
            loss = F.cross_entropy(logits, train_labels[idx], label_smoothing=params.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total_loss += loss.item() * len(idx)
            correct += int((logits.argmax(1) == train_labels[idx]).sum())
        head.eval()
        with torch.no_grad():
            val_logits = head_logits(head, val_views)
        val_loss = F.cross_entropy(val_logits, val_labels).item() if len(val_labels) else math.nan
        val_acc = (val_logits.argmax(1) == val_labels).float().mean().item() if len(val_labels) else math.nan
        seconds = time.perf_counter() - started
        stats = EpochStats(epoch, total_loss / n, correct / n, val_loss, val_acc, seconds, n / max(seconds, 1e-9))
        keeper.add(stats)
        if on_epoch:
            on_epoch(stats)
    return keeper.result(model)
