"""The training loop: batches streamed from the shards in, best-epoch model and per-epoch history out."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from greenr.data.images import Preprocessing, flip_view, flip_view_names
from greenr.data.loader import Samples, batches, plan
from greenr.data.tensors import normalize
from greenr.errors import GreenrError
from greenr.model.architectures import backbone_modules, split_parameters
from greenr.model.device import use_bf16
from greenr.params import AugmentParams, TrainParams
from greenr.paths import state_dir

log = logging.getLogger(__name__)


def distributed_context() -> tuple[int, int]:
    """(rank, world size): (0, 1) unless this process is in an initialised torch.distributed group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the process group torchrun describes (WORLD_SIZE > 1): nccl on CUDA, gloo otherwise.

    A plain `python -m stages.train` (no WORLD_SIZE) stays a single process.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return distributed_context()


@contextlib.contextmanager
def shared_temp_dir(prefix: str) -> Iterator[Path]:
    """A temporary folder under the state folder (on the project's disk: a RAM-backed /tmp would
    count against memory), the same one on every torchrun rank; removed when all are done."""
    rank, world = distributed_context()
    holder: list[str | None] = [tempfile.mkdtemp(prefix=f"{prefix}-", dir=state_dir()) if rank == 0 else None]
    if world > 1:
        dist.broadcast_object_list(holder, src=0)
    assert holder[0] is not None
    try:
        yield Path(holder[0])
    finally:
        if world > 1:
            dist.barrier()
        if rank == 0:
            shutil.rmtree(holder[0], ignore_errors=True)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    # Deterministic kernels where they exist; warn (not fail) on the few that have none.
    torch.use_deterministic_algorithms(True, warn_only=True)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def augment(images: torch.Tensor, aug: AugmentParams, generator: torch.Generator) -> torch.Tensor:
    """Random flips, resized crops and colour jitter on a uint8 batch, as one batched op each.

    Random numbers come from `generator` on the CPU, so a run is the same on any device.
    Returns float32 in [0, 255].
    """
    n = images.shape[0]
    device = images.device
    x = images.float()

    def uniform(low: float, high: float) -> torch.Tensor:
        return (torch.rand(n, generator=generator) * (high - low) + low).to(device)

    scale_x = torch.ones(n, device=device)
    scale_y = torch.ones(n, device=device)
    shift_x = torch.zeros(n, device=device)
    shift_y = torch.zeros(n, device=device)
    if aug.crop_scale_min < 1.0:
        area = uniform(aug.crop_scale_min, 1.0)
        log_ratio = uniform(math.log(3 / 4), math.log(4 / 3))
        ratio = torch.exp(log_ratio)
        scale_x = torch.sqrt(area * ratio).clamp(max=1.0)
        scale_y = torch.sqrt(area / ratio).clamp(max=1.0)
        shift_x = (uniform(-1.0, 1.0)) * (1 - scale_x)
        shift_y = (uniform(-1.0, 1.0)) * (1 - scale_y)
    flip_x = torch.ones(n, device=device)
    flip_y = torch.ones(n, device=device)
    if aug.hflip:
        flip_x = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0)
    if aug.vflip:
        flip_y = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0)
    if aug.crop_scale_min < 1.0 or aug.hflip or aug.vflip:
        theta = torch.zeros(n, 2, 3, device=device)
        theta[:, 0, 0] = scale_x * flip_x
        theta[:, 0, 2] = shift_x
        theta[:, 1, 1] = scale_y * flip_y
        theta[:, 1, 2] = shift_y
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if aug.color_jitter > 0:
        j = aug.color_jitter
        brightness = uniform(1 - j, 1 + j).view(n, 1, 1, 1)
        contrast = uniform(1 - j, 1 + j).view(n, 1, 1, 1)
        saturation = uniform(1 - j, 1 + j).view(n, 1, 1, 1)
        x = x * brightness
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * contrast + mean
        gray = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
        x = (x - gray) * saturation + gray
    return x.clamp(0, 255)


def mix_batch(
    x: torch.Tensor, aug: AugmentParams, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """Mixup or CutMix of a batch with a shuffled copy of itself.

    Returns (mixed images, partner index or None when mixing is off, weight of the original
    labels). The loss is weight * CE(y) + (1 - weight) * CE(y[partner]).
    """
    alphas = [("mixup", aug.mixup), ("cutmix", aug.cutmix)]
    alphas = [(kind, alpha) for kind, alpha in alphas if alpha > 0]
    if not alphas or x.shape[0] < 2:
        return x, None, 1.0
    # numpy's Beta draw seeded from the torch generator, so a run stays reproducible.
    rng = np.random.default_rng(int(torch.randint(2**31, (1,), generator=generator)))
    kind, alpha = alphas[int(rng.integers(len(alphas)))]
    weight = float(rng.beta(alpha, alpha))
    partner = torch.randperm(x.shape[0], generator=generator).to(x.device)
    if kind == "mixup":
        return weight * x + (1 - weight) * x[partner], partner, weight
    height, width = x.shape[-2:]
    cut = math.sqrt(1 - weight)
    box_h, box_w = int(height * cut), int(width * cut)
    top, left = int(rng.integers(height - box_h + 1)), int(rng.integers(width - box_w + 1))
    mixed = x.clone()
    mixed[..., top : top + box_h, left : left + box_w] = x[partner][..., top : top + box_h, left : left + box_w]
    return mixed, partner, 1 - box_h * box_w / (height * width)


def make_optimizer(model: nn.Module, arch: str, params: TrainParams) -> torch.optim.Optimizer:
    if params.finetune == "auto":
        raise ValueError("train.finetune 'auto' must be resolved first (greenr.model.architectures.resolve_finetune)")
    backbone, head = split_parameters(model, arch)
    if params.finetune == "frozen":
        for p in backbone:
            p.requires_grad_(False)
        groups = [{"params": head, "lr": params.lr}]
    elif params.finetune == "discriminative":
        groups = [{"params": backbone, "lr": params.lr * params.backbone_lr_scale}, {"params": head, "lr": params.lr}]
    else:
        groups = [{"params": backbone + head, "lr": params.lr}]
    return _optimizer(groups, params)


def part_optimizer(model: nn.Module, part: nn.Module, params: TrainParams) -> torch.optim.Optimizer:
    """The optimizer of `part` alone (a module of `model`); every other parameter of the model is frozen."""
    trained = {id(p) for p in part.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in trained)
    return _optimizer([{"params": list(part.parameters()), "lr": params.lr}], params)


def _optimizer(groups: list[dict[str, Any]], params: TrainParams) -> torch.optim.Optimizer:
    if params.optimizer == "adam":
        return torch.optim.Adam(groups, lr=params.lr, weight_decay=params.weight_decay)
    if params.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=params.lr, weight_decay=params.weight_decay)
    return torch.optim.SGD(groups, lr=params.lr, momentum=0.9, weight_decay=params.weight_decay)


def make_scheduler(
    optimizer: torch.optim.Optimizer, params: TrainParams, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The learning-rate schedule of `params.schedule`, stepped once per batch (None: constant)."""
    total = max(1, params.epochs * steps_per_epoch)
    if params.schedule == "onecycle":
        peaks = [group["lr"] for group in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peaks, total_steps=total, pct_start=0.25)
    if params.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)))
    return None


def set_train_mode(model: nn.Module, arch: str, finetune: str) -> None:
    """Train mode, except a frozen backbone keeps its BatchNorm statistics (eval mode)."""
    model.train()
    if finetune == "frozen":
        for module in backbone_modules(model, arch):
            module.eval()


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    seconds: float = 0.0
    images_per_second: float = 0.0

    def row(self) -> dict[str, float | int]:
        """What goes into the committed plot file: no timings, so reruns are identical."""
        return {
            "epoch": self.epoch,
            "train_loss": round(self.train_loss, 6),
            "train_acc": round(self.train_acc, 6),
            "val_loss": round(self.val_loss, 6),
            "val_acc": round(self.val_acc, 6),
        }


@dataclass
class FitResult:
    model: nn.Module
    best_epoch: int
    history: list[EpochStats] = field(default_factory=list)

    @property
    def best(self) -> EpochStats:
        return self.history[self.best_epoch - 1]


@dataclass
class EpochKeeper:
    """Which epoch a training run returns (`fit`, `frozen.fit_head`), fed each epoch's figures.

    `select`: best = highest validation accuracy, ties broken by lower validation loss (a copy of
    `module`'s weights is kept); last = the final epoch (for schedules that anneal to zero).
    """

    module: nn.Module  # what is restored to the kept epoch
    select: str
    history: list[EpochStats] = field(default_factory=list)
    best_epoch: int = 0
    _best_key: tuple[float, float] | None = None
    _best_state: dict[str, torch.Tensor] = field(default_factory=dict)

    def add(self, stats: EpochStats) -> None:
        """Record an epoch; GreenrError when its training loss is not finite."""
        self.history.append(stats)
        if not math.isfinite(stats.train_loss):
            raise GreenrError(f"training diverged at epoch {stats.epoch} (loss {stats.train_loss})", "lower train.lr")
        key = (stats.val_acc, -stats.val_loss)
        if self.select == "last" or self._best_key is None or key > self._best_key:
            self._best_key, self.best_epoch = key, stats.epoch
            if self.select == "best":
                self._best_state = {k: t.detach().clone() for k, t in self.module.state_dict().items()}

    def result(self, model: nn.Module) -> FitResult:
        """`model` (holding `module`) with the kept epoch's weights, in eval mode."""
        if self._best_state:
            self.module.load_state_dict(self._best_state)
        return FitResult(model=model.eval(), best_epoch=self.best_epoch, history=self.history)


def train_one_epoch(
    model: nn.Module,
    data: Samples,
    spec: Preprocessing,
    params: TrainParams,
    arch: str,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    epoch: int,
    aug_generator: torch.Generator,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    bf16: bool = False,
) -> tuple[float, float]:
    """One pass over the training set in this epoch's seeded order; returns (mean loss, accuracy).

    Batches stream from the shards (greenr.data.loader), decoded in worker processes while the
    model trains. Data-parallel (`model` wrapped in DistributedDataParallel): each rank trains on
    its own part of the epoch in batches of batch_size / world, augmented with its own
    `aug_generator`, and the returned figures cover all ranks.
    """
    rank, world = distributed_context()
    set_train_mode(getattr(model, "module", model), arch, params.finetune)
    # Summed on the device: reading a loss back every step would stall a GPU at each batch.
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    batch_size = math.ceil(params.batch_size / world)
    cuda = device.type == "cuda"
    stream = batches(
        data,
        spec.image_size,
        batch_size,
        True,
        params.seed,
        epoch,
        rank,
        world,
        pin_memory=cuda and not params.gpu_decode,
        gpu_decode=device if cuda and params.gpu_decode else None,
    )
    # Ranks may differ in batch count: join() keeps them in step.
    joined = model.join() if isinstance(model, DistributedDataParallel) else contextlib.nullcontext()
    with joined:
        for batch in stream:
            images = batch.images.to(device, non_blocking=True)
            y = batch.labels.to(device, non_blocking=True)
            x = normalize(augment(images, params.augment, aug_generator), spec)
            x, partner, weight = mix_batch(x, params.augment, aug_generator)
            if bf16:  # oneDNN's and cuDNN's bf16 convolutions are fastest on NHWC
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=params.label_smoothing)
                if partner is not None:
                    loss = weight * loss + (1 - weight) * F.cross_entropy(
                        logits.float(), y[partner], label_smoothing=params.label_smoothing
                    )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total_loss += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
    totals = torch.stack([total_loss, correct.double(), torch.tensor(float(seen), dtype=torch.float64, device=device)])
    if world > 1:
        dist.all_reduce(totals)
    total, right, count = totals.tolist()
    return total / max(count, 1), right / max(count, 1)


@torch.inference_mode()
def predict_samples(
    model: nn.Module,
    data: Samples,
    spec: Preprocessing,
    device: torch.device,
    batch_size: int,
    hflip: bool = False,
    vflip: bool = False,
) -> torch.Tensor:
    """Logits (N, C) on the CPU of every image of `data` (the mean over the flip views of
    greenr.data.images.flip_view_names), streamed from the shards."""
    model.eval()
    out: torch.Tensor | None = None
    views = flip_view_names(hflip, vflip)
    for batch in batches(data, spec.image_size, batch_size, pin_memory=device.type == "cuda"):
        images = batch.images.to(device, non_blocking=True)
        logits = torch.stack([model(normalize(flip_view(images, v), spec)).float() for v in views]).mean(0).cpu()
        if out is None:
            out = torch.empty(len(data), logits.shape[1])
        out[batch.index] = logits
    return out if out is not None else torch.empty(0, 0)


def validate(
    model: nn.Module, data: Samples, spec: Preprocessing, device: torch.device, batch_size: int
) -> tuple[float, float]:
    logits = predict_samples(model, data, spec, device, batch_size)
    labels = data.label_tensor
    loss = F.cross_entropy(logits, labels).item()
    acc = (logits.argmax(1) == labels).float().mean().item()
    return loss, acc


def fit(
    model: nn.Module,
    arch: str,
    train: Samples,
    val: Samples,
    spec: Preprocessing,
    params: TrainParams,
    device: torch.device,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> FitResult:
    """Train for `params.epochs`, validating after each; return the epoch `params.select` keeps
    (EpochKeeper)."""
    model.to(device)
    optimizer = make_optimizer(model, arch, params)
    rank, world = distributed_context()
    steps = len(plan(train, math.ceil(params.batch_size / world), True, params.seed, 1, rank, world))
    scheduler = make_scheduler(optimizer, params, steps)
    bf16 = use_bf16(params.precision, device)
    if bf16:
        model.to(memory_format=torch.channels_last)
    net: nn.Module = model
    # Own augmentation per rank; the same initial weights everywhere (DDP broadcasts rank 0's).
    aug_generator = torch.Generator().manual_seed(params.seed if world == 1 else params.seed * 1000 + rank + 1)
    if world > 1:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    keeper = EpochKeeper(model, params.select)
    for epoch in range(1, params.epochs + 1):
        started = time.perf_counter()
        train_loss, train_acc = train_one_epoch(
            net, train, spec, params, arch, optimizer, device, epoch, aug_generator, scheduler, bf16
        )
        train_seconds = time.perf_counter() - started
        val_loss, val_acc = validate(model, val, spec, device, params.batch_size)
        stats = EpochStats(
            epoch,
            train_loss,
            train_acc,
            val_loss,
            val_acc,
            seconds=time.perf_counter() - started,
            images_per_second=len(train) / train_seconds,
        )
        keeper.add(stats)
        log.info(
            "epoch %d/%d train_loss=%.4f train_acc=%.3f val_loss=%.4f val_acc=%.3f (%.1fs, %.0f img/s)",
            epoch,
            params.epochs,
            train_loss,
            train_acc,
            val_loss,
            val_acc,
            stats.seconds,
            stats.images_per_second,
        )
        if on_epoch:
            on_epoch(stats)
    return keeper.result(model)
