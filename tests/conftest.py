"""Fixtures shared by every test folder: offline by default, and small generated images."""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: on a shared, oversubscribed machine spinning
# threads make torch 3-10x slower. Must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers.images import class_image, jpeg_bytes


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never reach outside loopback, and nothing phones home."""
    monkeypatch.setenv("GREENR_OFFLINE", "1")
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    # mlflow.set_tracking_uri() exports this variable; one test's store must not leak into the next.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="session")
def make_dataset() -> Callable[..., dict[str, list[Path]]]:
    """Write `per_class` JPEGs per class into `root/{class}/NNNNNNNN.jpg`; return the paths."""

    def make(
        root: Path, per_class: int = 6, size: int = 48, classes: tuple[str, ...] = ("dandelion", "grass")
    ) -> dict[str, list[Path]]:
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
