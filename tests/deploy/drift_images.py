"""Small synthetic meadow photos for the drift tests: green grass, some with yellow flowers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from greenr.data import Example, file_md5

SIZES = ((64, 48), (48, 64), (64, 64), (80, 60), (96, 64))


def meadow(rng: np.random.Generator, label: str, darken: float = 1.0, blue_shift: float = 0.0) -> Image.Image:
    width, height = SIZES[rng.integers(len(SIZES))]
    base = np.array([70, 140, 50], dtype=np.float32) * rng.uniform(0.6, 1.4)
    pixels = base + rng.normal(0, 18, size=(height, width, 3))
    if label == "dandelion":
        for _ in range(rng.integers(2, 6)):
            cy, cx, r = rng.integers(0, height), rng.integers(0, width), rng.integers(3, 9)
            yy, xx = np.ogrid[:height, :width]
            pixels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = (235, 205, 40)
    pixels = pixels * darken
    if blue_shift:
        pixels[..., 2] += blue_shift
        pixels[..., :2] *= 0.8
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")


def meadows(seed: int, count: int, **shift: float) -> Iterator[tuple[str, Image.Image]]:
    rng = np.random.default_rng(seed)
    for i in range(count):
        label = ("dandelion", "grass")[i % 2]
        yield label, meadow(rng, label, **shift)


def write_training_set(root: Path, seed: int, count: int) -> list[Example]:
    """Images under root/data/<class>/ and their manifest rows (as the split stage writes them)."""
    rows = []
    for i, (label, image) in enumerate(meadows(seed, count)):
        path = root / "data" / label / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        rows.append(Example(path.relative_to(root).as_posix(), label, file_md5(path)))
    return rows
