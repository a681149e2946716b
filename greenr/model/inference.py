"""Batched inference on uint8 image tensors; used by evaluation and the server."""

from __future__ import annotations

import torch
from torch import nn

from greenr.data.images import Preprocessing, flip_view, flip_view_names
from greenr.data.tensors import normalize

# Images per forward pass on a CPU: a larger batch (feature extraction's, evaluation's) goes through
# the network in chunks of this many: less activation memory, no slower on a CPU, and the same
# outputs bit for bit (docs/scale.md, memory).
CPU_FORWARD_IMAGES = 32


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    spec: Preprocessing,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
) -> torch.Tensor:
    """Logits (N, C) on the CPU for uint8 images (N, 3, S, S)."""
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(device, non_blocking=True)
        outputs.append(model(normalize(batch, spec)).float().cpu())
    if not outputs:
        return torch.empty(0, 0)
    return torch.cat(outputs)


def predict_flip_averaged_logits(
    model: nn.Module,
    images: torch.Tensor,
    spec: Preprocessing,
    hflip: bool,
    vflip: bool,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
) -> torch.Tensor:
    """Mean logits over the test-time flip views (greenr.data.images.flip_view_names)."""
    views = flip_view_names(hflip, vflip)
    logits = [predict_logits(model, flip_view(images, view), spec, device, batch_size) for view in views]
    return logits[0] if len(logits) == 1 else torch.stack(logits).mean(0)


def predict_proba(
    model: nn.Module,
    images: torch.Tensor,
    spec: Preprocessing,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
) -> torch.Tensor:
    """Class probabilities (N, C) on the CPU."""
    return torch.softmax(predict_logits(model, images, spec, device, batch_size), dim=1)
