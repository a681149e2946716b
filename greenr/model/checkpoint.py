"""The checkpoint format: weights plus what rebuilds the model, never a pickled module.

    {"format": 1, "model": state_dict, "arch": str, "classes": [str], "image_size": int,
     "preprocessing": {...}, "meta": {...}, "temperature": float, "flip_average": bool,
     "vflip_average": bool}

`temperature` (optional, 1.0 when absent) divides the logits before the softmax, so that the
probabilities are calibrated (fitted on validation; greenr.model.calibration). `flip_average`
and `vflip_average` (optional, false when absent) ask every consumer to average the logits of the
image and its mirror and/or vertical flips (greenr.data.images.flip_view_names).

Loaded with `weights_only=True`, so a checkpoint cannot run code.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from greenr.atomic import write_bytes
from greenr.data.images import Preprocessing
from greenr.errors import GreenrError
from greenr.model.architectures import build_model
from greenr.paths import MODEL_PATH

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format", "model", "arch", "classes", "image_size", "preprocessing")


@dataclass
class Checkpoint:
    state_dict: dict[str, torch.Tensor]
    arch: str
    classes: list[str]
    preprocessing: Preprocessing
    meta: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""
    temperature: float = 1.0
    flip_average: bool = False
    vflip_average: bool = False

    @property
    def image_size(self) -> int:
        return self.preprocessing.image_size

    def build(self, device: str | torch.device = "cpu") -> nn.Module:
        """The model in eval mode with these weights."""
        model = build_model(self.arch, len(self.classes), pretrained=False)
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as exc:
            raise GreenrError(
                f"checkpoint weights do not fit arch {self.arch!r}: {exc}", "retrain with `dvc repro train`"
            ) from None
        return model.to(device).eval()


def to_bytes(
    model: nn.Module,
    arch: str,
    classes: list[str],
    preprocessing: Preprocessing,
    meta: dict[str, Any] | None = None,
    temperature: float = 1.0,
    flip_average: bool = False,
    vflip_average: bool = False,
) -> bytes:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    payload = {
        "format": FORMAT_VERSION,
        "model": state,
        "arch": arch,
        "classes": list(classes),
        "image_size": preprocessing.image_size,
        "preprocessing": preprocessing.to_dict(),
        "meta": dict(meta or {}),
        "temperature": float(temperature),
        "flip_average": bool(flip_average),
        "vflip_average": bool(vflip_average),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def save(
    path: str | Path,
    model: nn.Module,
    arch: str,
    classes: list[str],
    preprocessing: Preprocessing,
    meta: dict[str, Any] | None = None,
    temperature: float = 1.0,
    flip_average: bool = False,
    vflip_average: bool = False,
) -> str:
    """Write the checkpoint atomically; return its SHA-256."""
    data = to_bytes(model, arch, classes, preprocessing, meta, temperature, flip_average, vflip_average)
    write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def from_bytes(data: bytes, source: str = "checkpoint") -> Checkpoint:
    fix = f"retrain with `dvc repro train` or restore it with `dvc pull {MODEL_PATH}`"
    try:
        raw = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise GreenrError(f"{source} is not a readable checkpoint: {type(exc).__name__}: {exc}", fix) from None
    if not isinstance(raw, dict) or any(key not in raw for key in REQUIRED_KEYS):
        raise GreenrError(f"{source} lacks the checkpoint keys {list(REQUIRED_KEYS)}", fix)
    if raw["format"] != FORMAT_VERSION:
        raise GreenrError(f"{source} has checkpoint format {raw['format']}, expected {FORMAT_VERSION}", fix)
    return Checkpoint(
        state_dict=raw["model"],
        arch=str(raw["arch"]),
        classes=list(raw["classes"]),
        preprocessing=Preprocessing.from_dict(raw["preprocessing"]),
        meta=dict(raw.get("meta") or {}),
        sha256=hashlib.sha256(data).hexdigest(),
        temperature=float(raw.get("temperature", 1.0)),
        flip_average=bool(raw.get("flip_average", False)),
        vflip_average=bool(raw.get("vflip_average", False)),
    )


def load(path: str | Path) -> Checkpoint:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise GreenrError(
            f"checkpoint {path} does not exist", f"run `dvc repro` to train it or `dvc pull {MODEL_PATH}`"
        ) from None
    return from_bytes(data, source=str(path))
