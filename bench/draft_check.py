"""Does reduced-scale JPEG decoding (PIL draft, greenr.data.images) change what the model says?

For real images of the data set, upscaled to phone size (4032 px on the long side, JPEG q90: the
only large photos of these classes we have), compares the model input and the served model's
logits from a full decode with those from the reduced-scale decode the server uses, and times
both decodes. Also checks that the original (small) images are decoded exactly as before.

    .venv/bin/python bench/draft_check.py [--model models/stage-1.onnx] [--limit 100]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.photos import DATA, PHONE_SIZE, training_photos, upscaled
from greenr.backends.loading import open_backend
from greenr.data.images import decode_image, prepare, to_uint8_array
from greenr.hardware import cpu_model

PHONE_LONG_SIDE = PHONE_SIZE[0]


def phone_size(path: Path) -> bytes:
    """The image upscaled (Lanczos) to 4032 px on its long side, aspect kept, as a JPEG (q90)."""
    image = Image.open(path).convert("RGB")
    scale = PHONE_LONG_SIDE / max(image.size)
    return upscaled(path, (round(image.width * scale), round(image.height * scale)))


def timed(fn, *args) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(REPO / "models" / "stage-1.onnx"))
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--limit", type=int, default=0, help="images per class (0 = all)")
    args = parser.parse_args()
    print(f"{cpu_model()}, {len(os.sched_getaffinity(0))} cores, load average {os.getloadavg()[0]:.1f}")
    _, selection = open_backend(args.model)
    backend = selection.backend
    spec = backend.spec.preprocessing
    paths = []
    for label in sorted({p.parent.name for p in training_photos(Path(args.data))}):
        found = [p for p in training_photos(Path(args.data)) if p.parent.name == label]
        paths += found[: args.limit] if args.limit else found
    small_same = 0
    full_inputs, fast_inputs, full_times, fast_times, sizes = [], [], [], [], []
    for path in paths:
        data = path.read_bytes()
        small_same += np.array_equal(prepare(data, spec).array, to_uint8_array(decode_image(data), spec))
        big = phone_size(path)
        sizes.append(len(big))
        t_full, full = timed(lambda d: to_uint8_array(decode_image(d), spec), big)
        t_fast, fast = timed(lambda d: prepare(d, spec).array, big)
        full_inputs.append(full)
        fast_inputs.append(fast)
        full_times.append(t_full)
        fast_times.append(t_fast)
    full_x, fast_x = np.stack(full_inputs), np.stack(fast_inputs)
    full_logits, fast_logits = backend.predict_logits(full_x), backend.predict_logits(fast_x)
    pixel = np.abs(full_x.astype(int) - fast_x.astype(int))
    logit = np.abs(full_logits - fast_logits)
    same = (full_logits.argmax(1) == fast_logits.argmax(1)).mean()
    margin = np.abs(full_logits[:, 0] - full_logits[:, 1]) if full_logits.shape[1] == 2 else None
    print(f"model {args.model}: {backend.spec.arch} at {spec.image_size} px, {backend.name} {backend.precision}")
    print(f"original images: {small_same}/{len(paths)} decoded exactly as before (too small to reduce)")
    print(f"phone-size copies ({PHONE_LONG_SIDE} px long side, median {statistics.median(sizes) / 1e6:.1f} MB):")
    print(
        f"  decode + resize: full {statistics.median(full_times) * 1000:.0f} ms, "
        f"reduced {statistics.median(fast_times) * 1000:.0f} ms (medians)"
    )
    print(
        f"  model input |diff|: mean {pixel.mean():.2f}, p99 {np.percentile(pixel, 99):.0f}, max {pixel.max()} "
        "(levels of 255)"
    )
    print(
        f"  logits |diff|: mean {logit.mean():.4f}, max {logit.max():.4f}"
        + (f"; smallest logit margin {margin.min():.3f}" if margin is not None else "")
    )
    print(f"  labels the same: {same * 100:.1f}% of {len(paths)}")
    print(f"load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
