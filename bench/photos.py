"""Request bodies for the serving benchmarks: a real training photo, and a phone-size photo made from it."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "datasets" / "dandelion-grass"
PHONE_SIZE = (4032, 3024)


def training_photos(data: Path = DATA) -> list[Path]:
    """The data set's JPEGs (the shared copy beside the checkout, else data/)."""
    for folder in (data, REPO / "data"):
        found = sorted(folder.glob("*/*.jpg")) if folder.is_dir() else []
        if found:
            return found
    raise SystemExit(f"no images in {data} or {REPO / 'data'}: run `greenr ingest` or pass --data")


def upscaled(path: Path, size: tuple[int, int] | None = None, quality: int = 90) -> bytes:
    """`path` resized (Lanczos) to `size` (default: a 12 MP phone photo, turned like the image), as a
    JPEG. The only large photos of these classes we have: smoother than a real phone photo."""
    image = Image.open(path).convert("RGB")
    if size is None:
        size = PHONE_SIZE if image.width >= image.height else PHONE_SIZE[::-1]
    big = image.resize(size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    big.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()
