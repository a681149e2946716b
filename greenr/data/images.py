"""Image decoding and preprocessing, shared by training, evaluation and serving.

Training decodes each image once into a uint8 array at the model's input size
(`load_model_input`); serving does exactly the same per request, then both normalise with the
checkpoint's mean and std. One code path means the served model sees what it was trained on.
This module needs only PIL and NumPy, so a server without torch can import it.

A JPEG much larger than the model input (a 12 MP phone photo for a 128 px model) is decoded at
1/2, 1/4 or 1/8 scale (the decoder's DCT scaling, PIL `draft()`), as long as its shorter side
stays at least DRAFT_MARGIN times the input size; the resize then starts from that. It cuts the
decode of a phone photo about tenfold; docs/serving.md has the measured effect on the logits.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})
SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "MPO"})
# Far above any photo we expect (a 50 MP camera), far below a decompression bomb.
DEFAULT_MAX_PIXELS = 50_000_000
# Reduced-scale JPEG decoding keeps the shorter side at least this many times the model input.
DRAFT_MARGIN = 2


# Test-time flip views by name: the flip axes of a batch (N, C, H, W) each one applies.
FLIP_AXES = {"centre": (), "hflip": (-1,), "vflip": (-2,), "hvflip": (-1, -2)}


def flip_view_names(hflip: bool, vflip: bool) -> list[str]:
    """The test-time views whose logits are averaged: the image, with `hflip` its mirror, with
    `vflip` its vertical flip (and, with both, the image flipped both ways): 1, 2 or 4 views."""
    names = ["centre"]
    if hflip:
        names.append("hflip")
    if vflip:
        names += ["vflip", "hvflip"] if hflip else ["vflip"]
    return names


def flip_view(images: Any, name: str) -> Any:
    """One flip view (FLIP_AXES) of a batch (N, C, H, W): a NumPy array (contiguous) or a torch tensor."""
    axes = FLIP_AXES[name]
    if not axes:
        return images
    if isinstance(images, np.ndarray):
        return np.ascontiguousarray(np.flip(images, axes))
    return images.flip(axes)


class ImageError(ValueError):
    """The bytes are not an image we can use; `reason` is safe to show to a client."""

    def __init__(self, reason: str, kind: str = "invalid") -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind  # "invalid" | "unsupported" | "too_large"


@dataclass(frozen=True)
class Preprocessing:
    """What turns an image into model input; stored in every checkpoint."""

    image_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # Shorter side resized to image_size, then the centre square cropped.
    resize: str = "shorter_side_center_crop"

    def to_dict(self) -> dict:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, raw: dict) -> Preprocessing:
        return cls(
            image_size=int(raw["image_size"]),
            mean=tuple(raw["mean"]),
            std=tuple(raw["std"]),
            resize=str(raw.get("resize", cls.resize)),
        )


@dataclass(frozen=True)
class ModelInput:
    """One image ready for a model, and the size it came in."""

    array: np.ndarray  # uint8 (3, S, S)
    original_size: tuple[int, int]  # (width, height) of the upright image, before any reduction


def decode_image(source: bytes | str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode bytes or a file into an upright RGB image.

    Handles EXIF orientation, grayscale, palette and alpha (composited on white), CMYK.
    Raises ImageError for anything that is not a complete, supported, reasonably sized image.
    """
    return _decode(source, max_pixels)[0]


def _decode(
    source: bytes | str | Path, max_pixels: int, min_side: int | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """(upright RGB image, its full (width, height)); a JPEG may come reduced while its shorter
    side stays >= `min_side`."""
    stream = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                img: Image.Image = Image.open(stream)
            except UnidentifiedImageError:
                raise ImageError("not a recognised image") from None
            except (Image.DecompressionBombError, Image.DecompressionBombWarning):
                raise ImageError("image has too many pixels", "too_large") from None
            except (OSError, SyntaxError, ValueError) as exc:
                # A file cut off inside its header fails here, before `load()`.
                raise ImageError(f"image is truncated or corrupt ({exc})") from None
            if img.format not in SUPPORTED_FORMATS:
                raise ImageError(f"unsupported image format {img.format}; use JPEG, PNG or WebP", "unsupported")
            width, height = img.size
            if width * height > max_pixels:
                raise ImageError(f"image is {width}x{height} pixels, over the limit of {max_pixels}", "too_large")
            if min_side and img.format == "JPEG" and min(width, height) >= 2 * min_side:
                scale = min(width, height) / min_side
                img.draft(img.mode, (math.ceil(width / scale), math.ceil(height / scale)))
            try:
                img.load()
                transposed = ImageOps.exif_transpose(img)
                if transposed.size != img.size:  # rotated by 90 degrees
                    width, height = height, width
                img = transposed
            except (Image.DecompressionBombError, Image.DecompressionBombWarning):
                raise ImageError("image has too many pixels", "too_large") from None
            except (OSError, SyntaxError, ValueError) as exc:
                raise ImageError(f"image is truncated or corrupt ({exc})") from None
            return _to_rgb(img), (width, height)
    finally:
        stream.close()


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        array = np.asarray(img, dtype=np.float64)
        top = array.max() or 1.0
        img = Image.fromarray((array / top * 255).astype(np.uint8), mode="L")
    return img.convert("RGB")


def resize_and_crop(img: Image.Image, size: int) -> Image.Image:
    """Shorter side to `size`, then the centre `size` x `size` square."""
    return ImageOps.fit(img, (size, size), method=Image.Resampling.BILINEAR, centering=(0.5, 0.5))


def to_uint8_array(img: Image.Image, spec: Preprocessing) -> np.ndarray:
    """RGB image -> uint8 array (3, S, S) at the model's input size."""
    if spec.resize != "shorter_side_center_crop":
        raise ValueError(f"unknown resize mode {spec.resize!r}")
    fitted = resize_and_crop(img, spec.image_size)
    return np.ascontiguousarray(np.asarray(fitted, dtype=np.uint8).transpose(2, 0, 1))


def prepare(source: bytes | str | Path, spec: Preprocessing, max_pixels: int = DEFAULT_MAX_PIXELS) -> ModelInput:
    """Decode (a large JPEG at reduced scale) and resize one image for the model."""
    image, size = _decode(source, max_pixels, min_side=DRAFT_MARGIN * spec.image_size)
    return ModelInput(to_uint8_array(image, spec), size)


def load_model_input(
    source: bytes | str | Path, spec: Preprocessing, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decode and resize one image: the uint8 array (3, S, S) that models take in batches."""
    return prepare(source, spec, max_pixels).array
