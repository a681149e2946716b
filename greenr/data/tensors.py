"""A split decoded once into uint8 tensors, and the normalisation every model input gets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from greenr.data.dataset import CLASSES, Example, read_listed
from greenr.data.images import Preprocessing, load_model_input
from greenr.errors import GreenrError


@dataclass
class TensorDataset:
    """A split decoded once: uint8 images (N, 3, S, S) and integer labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    paths: list[str]

    def __len__(self) -> int:
        return len(self.paths)


def load_tensors(
    rows: Sequence[Example], root: Path, spec: Preprocessing, classes: Sequence[str] = CLASSES, workers: int = 4
) -> TensorDataset:
    """Decode and resize every image of a split once, in parallel (PIL releases the GIL)."""
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted({r.label for r in rows} - set(index))
    if unknown:
        raise GreenrError(
            f"labels {unknown} are not among the classes {list(classes)}",
            "regenerate the split with `dvc repro -f split`",
        )
    images = read_listed(rows, root, lambda path: load_model_input(path, spec), workers)
    shape = (0, 3, spec.image_size, spec.image_size)
    stacked = torch.from_numpy(np.stack(images) if images else np.empty(shape, dtype=np.uint8))
    labels = torch.tensor([index[r.label] for r in rows], dtype=torch.long)
    return TensorDataset(stacked, labels, [r.path for r in rows])


def normalize(batch: torch.Tensor, spec: Preprocessing) -> torch.Tensor:
    """uint8 (N, 3, S, S) on any device -> float32 normalised, channels_last."""
    mean = torch.tensor(spec.mean, device=batch.device, dtype=torch.float32).view(1, 3, 1, 1) * 255
    std = torch.tensor(spec.std, device=batch.device, dtype=torch.float32).view(1, 3, 1, 1) * 255
    out = (batch.float() - mean) / std
    return out.contiguous(memory_format=torch.channels_last)
