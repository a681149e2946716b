"""Test images made in memory or on disk: two learnable classes, photo-like scenes and meadow
photos with controllable drift. The uploads a server must accept or refuse are in
greenr.data.upload_corpus."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from greenr.data.dataset import Example, file_md5
from greenr.data.upload_corpus import encode


def jpeg_bytes(img: Image.Image, **save_args: object) -> bytes:
    return encode(img, "JPEG", quality=90, **save_args)


# ---------------------------------------------------------------------------- two classes


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


def make_images(folder: Path, label: str, count: int, size: int = 48, seed: int = 0) -> list[Path]:
    """`count` generated JPEGs of one class in `folder`, named like the real data set."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{i:08d}.jpg"
        path.write_bytes(
            jpeg_bytes(class_image(label, seed=seed * 100_000 + sum(map(ord, label)) * 100 + i, size=size))
        )
        paths.append(path)
    return paths


def scene(label: str, seed: int, size: int = 160) -> Image.Image:
    """A photo-like image with structure at low frequencies (a smooth random field, dandelion blobs),
    so perceptual hashes behave as on real photos: a resized copy stays within a few bits, another
    scene does not (measured: copies 0-4 bits apart, 200 scenes at least 10 apart)."""
    rng = np.random.default_rng(seed * 2 + (label == "dandelion"))
    yy, xx = np.mgrid[0:size, 0:size] / size
    field = np.zeros((size, size))
    for _ in range(10):
        fy, fx = rng.uniform(0.3, 4, 2)
        phase = rng.uniform(0, 2 * np.pi, 2)
        field += rng.uniform(0.3, 1) * np.sin(2 * np.pi * fy * yy + phase[0]) * np.cos(2 * np.pi * fx * xx + phase[1])
    field = (field - field.min()) / (np.ptp(field) or 1)
    rgb = np.stack([40 + 60 * field, 90 + 120 * field, 20 + 40 * field], -1)
    if label == "dandelion":
        for _ in range(rng.integers(3, 7)):
            cy, cx = rng.uniform(0.1, 0.9, 2) * size
            radius = rng.uniform(0.04, 0.1) * size
            rgb[(yy * size - cy) ** 2 + (xx * size - cx) ** 2 < radius**2] = (240, 210, 30)
    rgb += rng.normal(0, 8, rgb.shape)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), mode="RGB")


def resized_copy(img: Image.Image, scale: float = 0.6, quality: int = 60) -> bytes:
    """The same photo resized and re-encoded at a lower JPEG quality: a near-duplicate."""
    smaller = img.resize(
        (max(8, round(img.width * scale)), max(8, round(img.height * scale))), Image.Resampling.BILINEAR
    )
    return encode(smaller, "JPEG", quality=quality)


# ---------------------------------------------------------------------------- meadows, for drift

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
