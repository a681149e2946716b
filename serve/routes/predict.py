"""POST /predict and POST /predict/batch."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, File, HTTPException, UploadFile

from serve.deps import ModelDep, StateDep
from serve.prediction import InputError, predict_one
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


def build_router(settings: Settings) -> APIRouter:
    """The routes, with body-size limits taken from `settings` when the app is built."""
    router = APIRouter(tags=["predict"])
    single_limit = settings.max_upload_bytes + MULTIPART_OVERHEAD
    batch_limit = settings.max_batch_files * settings.max_upload_bytes + MULTIPART_OVERHEAD

    @router.post("/predict", response_model=Prediction, responses=ERRORS, max_body_size=single_limit)
    async def predict(
        state: StateDep,
        loaded: ModelDep,
        file: Annotated[UploadFile, File(description="a JPEG, PNG or WebP image")],
    ) -> dict:
        """Classify one image (multipart field `file`)."""
        try:
            return await predict_one(state, file, loaded)
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
        state: StateDep,
        loaded: ModelDep,
        files: Annotated[list[UploadFile], File(description="images, field `files`")],
    ) -> dict:
        """Classify several images; each bad file gets its own error, the others still succeed."""
        if len(files) > settings.max_batch_files:
            raise HTTPException(413, detail=f"{len(files)} files, over the limit of {settings.max_batch_files}")

        async def one(upload: UploadFile) -> dict:
            try:
                out = await predict_one(state, upload, loaded)
                return {
                    "filename": upload.filename,
                    "status": 200,
                    **{k: out[k] for k in ("prediction", "confidence", "probabilities")},
                }
            except InputError as err:
                return {"filename": upload.filename, "status": err.status, "error": err.detail}

        # All files join the micro-batch queue together, so they share forward passes.
        results = await asyncio.gather(*(one(f) for f in files))
        return {"results": [BatchItem(**r) for r in results], "model": loaded.version()}

    return router
