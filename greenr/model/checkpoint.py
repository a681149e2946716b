"""The checkpoint format: weights plus the model's spec, never a pickled module.

    {"format": 1, "model": state_dict, **ModelSpec.to_dict()}

that is "arch", "classes", "image_size", "preprocessing", "meta", "temperature", "flip_average",
"vflip_average" (greenr.model.spec: the ONNX export carries the same dict). `temperature`
(1.0 when absent) and `flip_average`/`vflip_average` (false when absent) are optional.

Loaded with `weights_only=True`, so a checkpoint cannot run code.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from greenr.atomic import write_bytes
from greenr.errors import GreenrError
from greenr.model.architectures import build_model
from greenr.model.spec import SPEC_FORMAT, ModelSpec
from greenr.paths import MODEL_PATH

FORMAT_VERSION = SPEC_FORMAT
REQUIRED_KEYS = ("format", "model", "arch", "classes", "image_size", "preprocessing")


@dataclass
class Checkpoint:
    spec: ModelSpec
    state_dict: dict[str, torch.Tensor]
    sha256: str = ""  # of the file's bytes

    def build(self, device: str | torch.device = "cpu") -> nn.Module:
        """The model in eval mode with these weights."""
        arch = self.spec.arch
        model = build_model(arch, len(self.spec.classes), pretrained=False)
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as exc:
            raise GreenrError(
                f"checkpoint weights do not fit arch {arch!r}: {exc}", "retrain with `dvc repro train`"
            ) from None
        return model.to(device).eval()


def to_bytes(model: nn.Module, spec: ModelSpec) -> bytes:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # `format` first, then the weights, then the rest of the spec: the order checkpoints have always had.
    payload = {"format": FORMAT_VERSION, "model": state} | spec.to_dict()
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def save(path: str | Path, model: nn.Module, spec: ModelSpec) -> str:
    """Write the checkpoint atomically; return its SHA-256."""
    data = to_bytes(model, spec)
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
    try:
        spec = ModelSpec.from_dict(raw)
    except (ValueError, KeyError, TypeError) as exc:
        raise GreenrError(f"{source} has an unreadable model spec: {type(exc).__name__}: {exc}", fix) from None
    return Checkpoint(spec=spec, state_dict=raw["model"], sha256=hashlib.sha256(data).hexdigest())


def load(path: str | Path) -> Checkpoint:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise GreenrError(
            f"checkpoint {path} does not exist", f"run `dvc repro` to train it or `dvc pull {MODEL_PATH}`"
        ) from None
    return from_bytes(data, source=str(path))
