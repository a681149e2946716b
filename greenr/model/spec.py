"""The model spec: everything about a model except its weights, in one dict for every file that carries it.

The checkpoint (greenr.model.checkpoint) stores the spec's dict beside the weights, the ONNX export
(greenr.backends.export) stores the same dict as JSON in its metadata. The keys a checkpoint has
always had come first, in the order it has always written them, so the same weights make the same
bytes; the ones only an export sets (`checkpoint_sha256`, `probe`, `quantization`) are written
when set.

This module needs only NumPy (and greenr.data.images), so a server without torch can import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from greenr.data.images import Preprocessing

# The version of the spec's dict, and so of the checkpoint that holds it (its `format` key).
SPEC_FORMAT = 1


@dataclass(frozen=True)
class ModelSpec:
    """Everything about a model except its weights: carried by the checkpoint and by the ONNX metadata."""

    arch: str
    classes: list[str]
    preprocessing: Preprocessing
    # Divides the logits before the softmax, so that the probabilities are calibrated (fitted on
    # validation: greenr.model.calibration).
    temperature: float = 1.0
    # Test-time augmentation: average the logits of the image and of its horizontal mirror
    # and/or vertical flips (greenr.data.images.flip_view_names).
    flip_average: bool = False
    vflip_average: bool = False
    # Set in an export: the SHA-256 of the checkpoint it was made from (and, when read, of a
    # checkpoint itself: greenr.backends.model_file).
    checkpoint_sha256: str = ""
    meta: dict[str, Any] = field(default_factory=dict)  # how it was trained (best epoch, data version, ...)
    # The reference's (torch fp32) logits of greenr.backends.base.probe_batch(image_size), stored
    # at export, so a backend can be checked where torch is not installed. None: not known.
    reference_logits: np.ndarray | None = None
    # Set in the INT8 export only (greenr.backends.quantize): how it was quantized, and `backends`,
    # those whose INT8 results passed the export stage's test-split check.
    quantization: dict[str, Any] | None = None

    @property
    def image_size(self) -> int:
        return self.preprocessing.image_size

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain data (torch.save and JSON both take it); from_dict reads it back."""
        return {
            "format": SPEC_FORMAT,
            "arch": self.arch,
            "classes": list(self.classes),
            "image_size": self.image_size,
            "preprocessing": self.preprocessing.to_dict(),
            "meta": dict(self.meta),
            "temperature": float(self.temperature),
            "flip_average": bool(self.flip_average),
            "vflip_average": bool(self.vflip_average),
            **({"checkpoint_sha256": self.checkpoint_sha256} if self.checkpoint_sha256 else {}),
            **(
                {}
                if self.reference_logits is None
                else {"probe": {"count": len(self.reference_logits), "logits": self.reference_logits.tolist()}}
            ),
            **({"quantization": self.quantization} if self.quantization else {}),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelSpec:
        """The spec of a dict that to_dict wrote (other keys, such as a checkpoint's weights, are
        ignored); ValueError for another format. Optional keys absent: their defaults."""
        if raw.get("format") != SPEC_FORMAT:
            raise ValueError(f"model spec format {raw.get('format')!r}, expected {SPEC_FORMAT}")
        probe = raw.get("probe")
        return cls(
            arch=str(raw["arch"]),
            classes=[str(c) for c in raw["classes"]],
            preprocessing=Preprocessing.from_dict(raw["preprocessing"]),
            temperature=float(raw.get("temperature", 1.0)),
            flip_average=bool(raw.get("flip_average", False)),
            vflip_average=bool(raw.get("vflip_average", False)),
            checkpoint_sha256=str(raw.get("checkpoint_sha256", "")),
            meta=dict(raw.get("meta") or {}),
            reference_logits=None if not probe else np.asarray(probe["logits"], dtype=np.float32),
            quantization=dict(raw["quantization"]) if raw.get("quantization") else None,
        )
