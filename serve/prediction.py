"""One upload to one prediction: read within the size limit, decode off the event loop, classify."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from fastapi import UploadFile
from starlette.concurrency import run_in_threadpool

from greenr.data.images import ImageError, Preprocessing, decode_image, to_uint8_array
from greenr.ops.drift import image_features
from serve.model_store import LoadedModel
from serve.state import AppState

# ImageError.kind -> HTTP status. Decompression bombs are bad input (400), not big uploads (413).
STATUS_FOR_KIND = {"invalid": 400, "unsupported": 415, "too_large": 400}
log = logging.getLogger("serve")


class InputError(Exception):
    def __init__(self, status: int, detail: str, kind: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.kind = kind


async def read_upload(upload: UploadFile, max_bytes: int) -> bytes:
    """The file's bytes; over `max_bytes` is an InputError(413) without reading it all."""
    if upload.size is not None and upload.size > max_bytes:
        raise InputError(413, f"file is {upload.size} bytes, over the limit of {max_bytes}", "too_large_upload")
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise InputError(413, f"file is over the limit of {max_bytes} bytes", "too_large_upload")
    if not data:
        raise InputError(400, "file is empty", "invalid")
    return data


@dataclass(frozen=True)
class ModelInput:
    image: np.ndarray  # uint8 (3, S, S), what the model takes in batches
    drift_features: dict[str, float] | None  # None when drift is not monitored or they failed


def _decode(data: bytes, spec: Preprocessing, max_pixels: int, with_features: bool) -> ModelInput:
    decoded = decode_image(data, max_pixels=max_pixels)
    image = to_uint8_array(decoded, spec)
    features = None
    if with_features:
        try:  # from the small model input: cheap, and drift must never fail a request
            features = image_features(image, size=decoded.size)
        except Exception:
            log.exception("drift features failed; request served without them")
    return ModelInput(image, features)


async def preprocess(data: bytes, loaded: LoadedModel, max_pixels: int, with_features: bool = False) -> ModelInput:
    """Decode and resize in a worker thread (PIL releases the GIL); bad images -> InputError."""
    try:
        return await run_in_threadpool(_decode, data, loaded.ckpt.preprocessing, max_pixels, with_features)
    except ImageError as err:
        raise InputError(STATUS_FOR_KIND.get(err.kind, 400), err.reason, err.kind) from None


async def predict_one(state: AppState, upload: UploadFile, loaded: LoadedModel) -> dict:
    """Read, preprocess and classify one upload; raises InputError for bad input."""
    settings = state.settings
    try:
        data = await read_upload(upload, settings.max_upload_bytes)
        model_input = await preprocess(
            data, loaded, settings.max_pixels, with_features=loaded.drift_reference is not None
        )
    except InputError as err:
        state.metrics.input_errors.labels(err.kind).inc()
        raise
    probs = (await state.batcher.predict(model_input.image, loaded)).tolist()
    best = max(range(len(probs)), key=probs.__getitem__)
    label = loaded.classes[best]
    if model_input.drift_features is not None:
        state.drift.record(model_input.drift_features, label)
    state.metrics.predictions.labels(label).inc()
    state.metrics.confidence.observe(probs[best])
    if state.feedback is not None:  # below CAPTURE_BELOW_CONFIDENCE: kept for review, in the background
        state.feedback.capture_uncertain(data, label, probs[best], loaded.ckpt.sha256)
    return {
        "prediction": label,
        "confidence": probs[best],
        "probabilities": dict(zip(loaded.classes, probs)),
        "model": loaded.version(),
    }
