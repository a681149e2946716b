"""The interface every inference backend implements, and how backends are checked against the reference.

A backend turns uint8 images (N, 3, S, S), already resized by greenr.data.images, into logits
(N, C); normalisation is part of the model (the ONNX graph carries it, the torch backend applies
greenr.data.tensors.normalize). Probabilities are softmax(logits / temperature), with the
temperature the checkpoint carries. When the model file asks for it (`flip_average`,
`vflip_average`), the logits of each image and of its mirror and/or vertical flips are averaged.

Agreement with the reference (torch fp32, the code the model was trained and evaluated with) is
measured on a small built-in probe batch: every label the same, and logits within `TOLERANCE` of
the logits' scale (INT8: labels the same where the reference is not within that tolerance of a tie).
This module imports neither torch nor any backend library.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from greenr.data.images import flip_view, flip_view_names
from greenr.model.spec import ModelSpec

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "int8")
# Largest |logit - reference logit| accepted on the probe batch, as a share of the logits' scale
# (the largest |reference logit|, at least 1: float rounding grows with the values). fp32 differs
# from torch by rounding only; bf16 and INT8 round more, and their bounds sit above what was
# measured and far below what a broken conversion gives (the figures: docs/serving.md, "Backends"
# and "The INT8 export"). The labels must agree in every case, for INT8 where the reference is not
# near a tie (FLIP_MARGIN); what INT8 does to real images the export stage checks on the test split.
TOLERANCE = {"fp32": 1e-3, "bf16": 0.15, "int8": 0.5}
# Probe images whose reference top-2 logit margin is below FLIP_MARGIN[precision] x the logits'
# scale need not keep their label (0: every label must agree).
FLIP_MARGIN = {"fp32": 0.0, "bf16": 0.0, "int8": 0.5}
PROBE_COUNT = 8


def probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / temperature) per row, in float64 for stable sums."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


# Colours of outdoor photos (foliage, yellow flowers, sky, soil, shade, pale petals, moss, cloud).
_PROBE_COLOURS = (
    (70, 130, 50),
    (230, 200, 40),
    (110, 160, 210),
    (120, 90, 60),
    (40, 90, 30),
    (250, 240, 120),
    (90, 110, 80),
    (200, 200, 200),
)


def probe_batch(image_size: int, count: int = PROBE_COUNT) -> np.ndarray:
    """A fixed batch of synthetic images (uint8 (count, 3, S, S)): coloured fields with texture and
    a yellow disc. Plain arithmetic, no random generator, so every install makes the same pixels."""
    size = image_size
    grid_y, grid_x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    out = np.empty((count, 3, size, size), dtype=np.uint8)
    tint = np.array([1.0, 0.8, 0.5])[:, None, None]
    for i in range(count):
        base = np.array(_PROBE_COLOURS[i % len(_PROBE_COLOURS)], dtype=np.float64)[:, None, None]
        freq = 2 + 3 * i
        texture = 40 * np.sin(2 * np.pi * freq * grid_x + i) * np.cos(2 * np.pi * (freq + 1) * grid_y)
        image = base + texture[None] * tint
        disc = (grid_x - 0.3 - 0.05 * i) ** 2 + (grid_y - 0.6) ** 2 < (0.1 + 0.02 * i) ** 2
        image[:, disc] = np.array([245.0, 215.0, 30.0])[:, None]
        out[i] = np.clip(np.rint(image), 0, 255)
    return out


@dataclass(frozen=True)
class Agreement:
    """How a backend's logits compare with the reference's on the same images."""

    max_abs_diff: float
    label_agreement: float  # share of images with the same arg-max
    tolerance: float  # the largest |difference| allowed for these logits

    @property
    def ok(self) -> bool:
        return self.label_agreement == 1.0 and self.max_abs_diff <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_abs_logit_diff": self.max_abs_diff,
            "label_agreement": self.label_agreement,
            "tolerance": self.tolerance,
            "agrees": self.ok,
        }


def compare(
    logits: np.ndarray, reference: np.ndarray, relative_tolerance: float, flip_margin: float = 0.0
) -> Agreement:
    """Agreement of `logits` with `reference` (both (N, C)), the tolerance scaled by the largest
    |reference logit| (at least 1); a shape mismatch or a non-finite logit never agrees.

    Labels are compared on the rows whose reference top-2 margin is at least `flip_margin` x that
    scale (0: every row)."""
    logits = np.asarray(logits, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    scale = max(1.0, float(np.abs(reference).max(initial=0.0)))
    tolerance = relative_tolerance * scale
    if logits.shape != reference.shape or not np.isfinite(logits).all():
        return Agreement(float("inf"), 0.0, tolerance)
    decided = np.ones(len(reference), dtype=bool)
    if flip_margin > 0 and reference.shape[1] > 1:
        top2 = np.sort(reference, axis=1)[:, -2:]
        decided = top2[:, 1] - top2[:, 0] >= flip_margin * scale
    same = float(np.mean(logits.argmax(1)[decided] == reference.argmax(1)[decided])) if decided.any() else 1.0
    return Agreement(float(np.abs(logits - reference).max(initial=0.0)), same, tolerance)


@dataclass(frozen=True)
class ModelFile:
    name: str  # where it came from, for messages
    format: str  # "torch" | "onnx"
    spec: ModelSpec
    sha256: str  # of the file's bytes
    data: bytes
    checkpoint: Any = None  # the parsed greenr.model.checkpoint.Checkpoint of a torch file


class Backend(ABC):
    """One model loaded into one inference library at one precision.

    Not thread-safe: one thread runs it at a time (the server's batcher thread, the batch
    scorer's main thread). The library itself uses `threads` cores for each forward pass.
    """

    name: ClassVar[str]

    def __init__(self, model: ModelFile, precision: str, threads: int) -> None:
        if (precision == "int8") != (model.spec.quantization is not None):
            what = "an INT8 export" if model.spec.quantization else "not an INT8 export"
            raise ValueError(f"precision {precision} cannot run {model.name}: it is {what}")
        self.spec = model.spec
        self.precision = precision
        self.threads = threads

    @abstractmethod
    def forward(self, images: np.ndarray) -> np.ndarray:
        """float32 logits (N, C) of one batch of uint8 images (N, 3, S, S)."""

    def effective_precision(self) -> str:
        """The precision the library really computes in (a bf16 request may be ignored)."""
        return self.precision

    def predict_logits(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Logits (N, C) of uint8 images (N, 3, S, S), in batches of at most `batch_size`."""
        images = np.asarray(images)
        size = self.spec.image_size
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (3, size, size):
            raise ValueError(f"expected uint8 images (N, 3, {size}, {size}), got {images.dtype} {images.shape}")
        outputs = []
        views = flip_view_names(self.spec.flip_average, self.spec.vflip_average)
        for start in range(0, len(images), batch_size):
            batch = np.ascontiguousarray(images[start : start + batch_size])
            if len(views) == 1:
                outputs.append(self.forward(batch))
            else:  # one forward pass over all the views
                logits = self.forward(np.concatenate([flip_view(batch, view) for view in views]))
                outputs.append(logits.reshape(len(views), len(batch), -1).mean(0))
        if not outputs:
            return np.empty((0, len(self.spec.classes)), dtype=np.float32)
        return np.concatenate(outputs).astype(np.float32, copy=False)

    def predict_proba(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Calibrated class probabilities (N, C) in float32: softmax(logits / temperature)."""
        return probabilities(self.predict_logits(images, batch_size), self.spec.temperature).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "precision": self.precision, "threads": self.threads}
