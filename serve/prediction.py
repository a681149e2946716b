"""One upload to one prediction: read within the size limit, decode off the event loop, classify.

The hot path is the read (a multipart field, or the raw body of `POST /predict` with an image
Content-Type: no multipart parsing, no spooled file), the decode and resize (a large JPEG at
reduced scale, greenr.data.images) in a decoding thread, and the forward pass (serve.batching);
metrics and drift features are computed after the response (serve.observer).
"""

from __future__ import annotations

import asyncio
import functools
import logging

from fastapi import Request, UploadFile

from greenr.data.images import ImageError, ModelInput, prepare
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


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The raw request body; over `max_bytes` is an InputError(413) as soon as it is known."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise InputError(413, f"file is {declared} bytes, over the limit of {max_bytes}", "too_large_upload")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise InputError(413, f"file is over the limit of {max_bytes} bytes", "too_large_upload")
    if not body:
        raise InputError(400, "file is empty", "invalid")
    return bytes(body)


async def preprocess(state: AppState, data: bytes, loaded: LoadedModel) -> ModelInput:
    """Decode and resize in the decoding threads (PIL releases the GIL); bad images -> InputError."""
    loop = asyncio.get_running_loop()

    def decode() -> ModelInput:
        with state.batcher.turns.decoding():  # not while a forward pass runs (serve.batching.Turns)
            return prepare(data, loaded.spec.preprocessing, state.settings.max_pixels)

    try:
        return await loop.run_in_executor(state.decoder, decode)
    except ImageError as err:
        raise InputError(STATUS_FOR_KIND.get(err.kind, 400), err.reason, err.kind) from None


def _observe(state: AppState, model_input: ModelInput, label: str, confidence: float, drift: bool) -> None:
    """After the response: prediction metrics, and the request's drift features."""
    state.metrics.predictions.labels(label).inc()
    state.metrics.confidence.observe(confidence)
    if drift:
        # From the small model input: cheap, and the same whatever size the upload had.
        state.drift.record(image_features(model_input.array, size=model_input.original_size), label)


async def predict_one(state: AppState, upload: UploadFile, loaded: LoadedModel, client: str) -> dict:
    """Read, preprocess and classify one multipart upload from `client` (serve.feedback.client_identity,
    for its capture budget); raises InputError for bad input."""
    try:
        data = await read_upload(upload, state.settings.max_upload_bytes)
    except InputError as err:
        state.metrics.input_errors.labels(err.kind).inc()
        raise
    return await predict_bytes(state, data, loaded, client)


async def predict_bytes(state: AppState, data: bytes, loaded: LoadedModel, client: str) -> dict:
    """Preprocess and classify one image's bytes; raises InputError for bad input."""
    try:
        model_input = await preprocess(state, data, loaded)
    except InputError as err:
        state.metrics.input_errors.labels(err.kind).inc()
        raise
    probs = (await state.batcher.predict(model_input.array, loaded)).tolist()
    best = max(range(len(probs)), key=probs.__getitem__)
    label = loaded.classes[best]
    drift = loaded.drift_reference is not None
    state.observer.submit(functools.partial(_observe, state, model_input, label, probs[best], drift))
    if state.feedback is not None:  # below CAPTURE_BELOW_CONFIDENCE: kept for review, in the background
        state.feedback.capture_uncertain(client, data, label, probs[best], loaded.sha256)
    return {
        "prediction": label,
        "confidence": probs[best],
        "probabilities": dict(zip(loaded.classes, probs)),
        "model": loaded.version(),
    }
