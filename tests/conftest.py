"""Fixtures shared by every test folder: offline by default, and small generated images."""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: on a shared, oversubscribed machine spinning
# threads make torch 3-10x slower. Must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never reach outside loopback, and nothing phones home."""
    monkeypatch.setenv("GREENR_OFFLINE", "1")
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


def class_image(label: str, seed: int, size: int = 48) -> Image.Image:
    """Two visibly different classes: yellow blobs on green ("dandelion"), green noise ("grass")."""
    rng = np.random.default_rng(seed)
    green = np.zeros((size, size, 3), dtype=np.float64)
    green[..., 1] = rng.uniform(90, 170, (size, size))
    green[..., 0] = rng.uniform(20, 70, (size, size))
    green[..., 2] = rng.uniform(10, 50, (size, size))
    if label == "dandelion":
        yy, xx = np.mgrid[0:size, 0:size]
        for _ in range(rng.integers(2, 5)):
            cy, cx = rng.uniform(0.2, 0.8, 2) * size
            radius = rng.uniform(0.12, 0.25) * size
            blob = (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
            green[blob] = (240, 210, 30)
    return Image.fromarray(green.astype(np.uint8), mode="RGB")


def jpeg_bytes(img: Image.Image, **save_args: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=90, **save_args)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def make_dataset() -> Callable[..., dict[str, list[Path]]]:
    """Write `per_class` JPEGs per class into `root/{class}/NNNNNNNN.jpg`; return the paths."""

    def make(root: Path, per_class: int = 6, size: int = 48,
             classes: tuple[str, ...] = ("dandelion", "grass")) -> dict[str, list[Path]]:
        written: dict[str, list[Path]] = {}
        for offset, label in enumerate(classes):
            folder = root / label
            folder.mkdir(parents=True, exist_ok=True)
            written[label] = []
            for index in range(per_class):
                path = folder / f"{index:08d}.jpg"
                path.write_bytes(jpeg_bytes(class_image(label, seed=1000 * offset + index, size=size)))
                written[label].append(path)
        return written

    return make


@pytest.fixture(scope="session")
def class_jpeg() -> Callable[..., bytes]:
    """JPEG bytes of one generated image of a class: `class_jpeg(label, seed, size=48)`."""

    def make(label: str, seed: int, size: int = 48) -> bytes:
        return jpeg_bytes(class_image(label, seed, size))

    return make
