"""POST /predict and POST /predict/batch."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, File, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError

from serve.deps import get_model, get_state
from serve.errors import clip
from serve.feedback import client_identity
from serve.prediction import InputError, predict_bytes, predict_one, read_body
from serve.schemas import BatchItem, BatchPrediction, Error, Prediction
from serve.settings import Settings

# Room for the multipart boundaries and part headers around the file bytes.
MULTIPART_OVERHEAD = 64 * 1024
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Error, "description": "not an image, truncated, or too many pixels"},
    413: {"model": Error, "description": "over the upload size limit"},
    415: {"model": Error, "description": "image format other than JPEG, PNG or WebP"},
    503: {"model": Error, "description": "no model loaded yet"},
}
# Bodies POST /predict takes as the image itself (no multipart encoding to build or parse).
RAW_TYPES = ("image/jpeg", "image/png", "image/webp")
RAW_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "content": {kind: {"schema": {"type": "string", "format": "binary"}} for kind in RAW_TYPES},
    }
}


def build_router(settings: Settings) -> APIRouter:
    """The routes, with body-size limits taken from `settings` when the app is built."""
    router = APIRouter(tags=["predict"])
    single_limit = settings.max_upload_bytes + MULTIPART_OVERHEAD
    batch_limit = settings.max_batch_files * settings.max_upload_bytes + MULTIPART_OVERHEAD

    @router.post(
        "/predict", response_model=Prediction, responses=ERRORS, max_body_size=single_limit, openapi_extra=RAW_BODY_DOC
    )
    async def predict(
        request: Request,
        file: Annotated[UploadFile | None, File(description="a JPEG, PNG or WebP image")] = None,
    ) -> dict:
        """Classify one image: multipart field `file`, or the image itself as the body with
        `Content-Type: image/jpeg`, `image/png` or `image/webp` (the cheaper request)."""
        # The request's shape is checked before the app's state: a request that can never succeed
        # answers 415/422 whether or not a model is loaded (or the app was started at all).
        media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if file is None and media_type not in RAW_TYPES:
            if media_type.startswith("image/"):
                request.app.state.metrics.input_errors.labels("unsupported").inc()
                raise HTTPException(
                    415, detail=f"unsupported body type {clip(media_type)}; use one of {', '.join(RAW_TYPES)}"
                )
            # What FastAPI answers for a required field that is missing.
            raise RequestValidationError(
                [{"type": "missing", "loc": ("body", "file"), "msg": "Field required", "input": None}]
            )
        state = await get_state(request)
        loaded = await get_model(state)
        client = client_identity(request, None, state.settings)
        try:
            if file is not None:
                return await predict_one(state, file, loaded, client)
            return await predict_bytes(state, await read_body(request, settings.max_upload_bytes), loaded, client)
        except InputError as err:
            raise HTTPException(err.status, detail=err.detail) from None

    @router.post(
        "/predict/batch",
        response_model=BatchPrediction,
        responses=ERRORS,
        max_body_size=batch_limit,
        response_model_exclude_none=True,
    )
    async def predict_batch(
        request: Request,
        files: Annotated[list[UploadFile], File(description="images, field `files`")],
    ) -> dict:
        """Classify several images; each bad file gets its own error, the others still succeed."""
        if len(files) > settings.max_batch_files:
            raise HTTPException(413, detail=f"{len(files)} files, over the limit of {settings.max_batch_files}")
        # Resolved here, not as dependencies: FastAPI solves dependencies before it validates the
        # body, and a request without files should answer 422 whatever the model's state.
        state = await get_state(request)
        loaded = await get_model(state)
        client = client_identity(request, None, state.settings)

        async def one(upload: UploadFile) -> dict:
            try:
                out = await predict_one(state, upload, loaded, client)
                return {
                    "filename": clip(upload.filename),
                    "status": 200,
                    **{k: out[k] for k in ("prediction", "confidence", "probabilities")},
                }
            except InputError as err:
                return {"filename": clip(upload.filename), "status": err.status, "error": err.detail}

        # All files join the micro-batch queue together, so they share forward passes.
        results = await asyncio.gather(*(one(f) for f in files))
        return {"results": [BatchItem(**r) for r in results], "model": loaded.version()}

    return router
