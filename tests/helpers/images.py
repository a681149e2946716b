"""Test images made in memory or on disk: two learnable classes, every format and mode the
server must accept, bad ones, and meadow photos with controllable drift."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from greenr.data.dataset import Example, file_md5


def encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


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


# ---------------------------------------------------------------------------- uploads, good and bad


def photo(size: tuple[int, int] = (80, 60), mode: str = "RGB") -> Image.Image:
    """A small image with structure (so rotations change it), in `mode`."""
    img = Image.new("RGB", size, (40, 160, 40))
    for x in range(size[0] // 3):
        for y in range(size[1] // 2):
            img.putpixel((x, y), (230, 200, 30))
    return img.convert(mode) if mode != "RGB" else img


def exif_rotated_jpeg() -> tuple[bytes, bytes]:
    """(JPEG stored sideways with EXIF orientation 6, the same picture stored upright)."""
    upright = photo((80, 60))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # orientation 6 rotates it back
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(stored, "JPEG", exif=exif.tobytes(), quality=95), encode(upright, "JPEG", quality=95)


def palette_png_with_transparency() -> bytes:
    img = photo().convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    return encode(img, "PNG", transparency=0)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int, height: int) -> bytes:
    """A complete 1-bit grayscale PNG of width x height zeros: a few KB that decode to `width*height` pixels."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


GOOD: dict[str, tuple[bytes, str]] = {}


def good_corpus() -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, content type) of images that must classify with 200."""
    if not GOOD:
        GOOD.update(
            {
                "jpeg": (encode(photo(), "JPEG"), "image/jpeg"),
                "png": (encode(photo(), "PNG"), "image/png"),
                "webp": (encode(photo(), "WEBP"), "image/webp"),
                "grayscale_jpeg": (encode(photo(mode="L"), "JPEG"), "image/jpeg"),
                "grayscale_png": (encode(photo(mode="L"), "PNG"), "image/png"),
                "png_16bit": (encode(photo(mode="L").convert("I;16"), "PNG"), "image/png"),
                "rgba_png": (encode(photo(mode="RGBA"), "PNG"), "image/png"),
                "palette_png": (palette_png_with_transparency(), "image/png"),
                "cmyk_jpeg": (encode(photo(mode="CMYK"), "JPEG"), "image/jpeg"),
                "exif_rotated_jpeg": (exif_rotated_jpeg()[0], "image/jpeg"),
                "tall_photo": (encode(photo((30, 200)), "JPEG"), "image/jpeg"),
                "tiny_1px": (encode(photo((1, 1)), "PNG"), "image/png"),
                "wrong_content_type_header": (encode(photo(), "PNG"), "application/octet-stream"),
            }
        )
    return GOOD


def bad_corpus(max_upload_bytes: int) -> dict[str, tuple[bytes, str, int]]:
    """name -> (bytes, content type, expected status) for single-file uploads."""
    jpeg = encode(photo((200, 200)), "JPEG")
    return {
        "truncated_jpeg": (jpeg[: len(jpeg) // 2], "image/jpeg", 400),
        "truncated_png": (encode(photo((200, 200)), "PNG")[:300], "image/png", 400),
        "not_an_image_text": (b"hello, I am not a picture\n" * 20, "text/plain", 400),
        "not_an_image_html_as_jpeg": (b"<html><body>nope</body></html>", "image/jpeg", 400),
        "empty_file": (b"", "image/jpeg", 400),
        "random_bytes": (bytes(range(256)) * 40, "image/png", 400),
        "gif": (encode(photo(), "GIF"), "image/gif", 415),
        "bmp": (encode(photo(), "BMP"), "image/bmp", 415),
        "tiff": (encode(photo(), "TIFF"), "image/tiff", 415),
        "decompression_bomb_over_max_pixels": (bomb_png(8_000, 8_000), "image/png", 400),
        "decompression_bomb_over_pillow_limit": (bomb_png(20_000, 20_000), "image/png", 400),
        "oversized": (b"\xff\xd8\xff" + b"\0" * max_upload_bytes, "image/jpeg", 413),
    }


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
