"""The normalisation every model input gets (uint8 batches from greenr.data.loader or a request)."""

from __future__ import annotations

import torch

from greenr.data.images import Preprocessing


def normalize(batch: torch.Tensor, spec: Preprocessing) -> torch.Tensor:
    """uint8 (N, 3, S, S) on any device -> float32 normalised, channels_last."""
    mean = torch.tensor(spec.mean, device=batch.device, dtype=torch.float32).view(1, 3, 1, 1) * 255
    std = torch.tensor(spec.std, device=batch.device, dtype=torch.float32).view(1, 3, 1, 1) * 255
    out = (batch.float() - mean) / std
    return out.contiguous(memory_format=torch.channels_last)
