"""INT8 post-training static quantization of the ONNX export, calibrated on training images.

`quantize_int8` turns the fp32 export (uint8 images in, logits out) into an INT8 ONNX model with
quantize/dequantize pairs (8-bit activations, per-channel 8-bit weights) that onnxruntime and
OpenVINO both run; `with_quantization` records how it was made, and on which backends it passed
the export stage's check, in its `greenr` metadata. Calibration reads uint8 batches from any
iterable, once: the export stage streams them from the training shards.

NNCF rather than onnxruntime's `quantize_static`: its fast bias correction (each layer's bias absorbs
the mean shift that rounding its weights causes, which depthwise convolutions suffer most) keeps the
test answers where QDQ min-max does not (the comparison: docs/serving.md, INT8).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from greenr.backends.model_file import ONNX_METADATA_KEY, read_model
from greenr.errors import GreenrError

log = logging.getLogger(__name__)

# NNCF sends usage telemetry unless told it runs in CI; a pipeline stage phones nowhere.
os.environ.setdefault("NNCF_CI", "1")


def spread(n: int, limit: int) -> np.ndarray:
    """At most `limit` positions of `n`, evenly spaced (splits are sorted by path, so every class
    folder is represented)."""
    if n <= limit:
        return np.arange(n)
    return np.arange(limit) * n // limit


def quantize_int8(fp32_onnx: bytes, batches: Iterable[np.ndarray], count: int) -> bytes:
    """The INT8 ONNX model made from the fp32 export, calibrated on `count` images in uint8 batches
    (N, 3, S, S). The batches are read once, as they come (a generator will do: nothing is kept)."""
    import nncf
    import onnx

    from greenr.backends.export import INPUT_NAME

    seen = 0

    def images() -> Iterator[np.ndarray]:
        # NNCF reads one item per image: its statistics count images, and its result was measured so.
        nonlocal seen
        for batch in batches:
            for image in np.asarray(batch, dtype=np.uint8):
                seen += 1
                yield image[None]

    if count < 1:
        raise GreenrError(
            "no calibration images for the INT8 export", "check the training shards (`dvc repro prepare`)"
        )
    model = onnx.load_model_from_string(fp32_onnx)
    dataset = nncf.Dataset(images(), lambda image: {INPUT_NAME: image})
    with _quiet_cpp_extension():
        quantized = nncf.quantize(model, dataset, subset_size=count)
    if seen != count:
        raise GreenrError(
            f"calibration read {seen} images, expected {count}", "check the training shards (`dvc repro prepare`)"
        )
    return quantized.SerializeToString()


def with_quantization(int8_onnx: bytes, name: str, quantization: dict[str, Any]) -> bytes:
    """The INT8 model with `quantization` (how it was made, `backends` it passed on) in its `greenr` metadata."""
    import onnx

    proto = onnx.load_model_from_string(int8_onnx)
    spec = dataclasses.replace(read_model(int8_onnx, name, "onnx").spec, quantization=quantization)
    entries = [entry for entry in proto.metadata_props if entry.key == ONNX_METADATA_KEY]
    if len(entries) != 1:
        raise GreenrError(f"{name} has {len(entries)} `{ONNX_METADATA_KEY}` metadata entries, expected 1")
    entries[0].value = json.dumps(spec.to_dict(), sort_keys=True)
    return proto.SerializeToString()


def nncf_version() -> str:
    import nncf

    return f"nncf {nncf.__version__}"


@contextlib.contextmanager
def _quiet_cpp_extension() -> Iterator[None]:
    """torch's cpp_extension, which nncf.quantize imports, warns on a machine with a CUDA_HOME but
    no CUDA runtime; quantizing an ONNX model never uses CUDA."""
    cpp_extension = logging.getLogger("torch.utils.cpp_extension")
    level = cpp_extension.level
    cpp_extension.setLevel(logging.ERROR)
    try:
        yield
    finally:
        cpp_extension.setLevel(level)
