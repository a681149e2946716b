"""GET /health, GET /ready, GET /model and POST /model/reload."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from greenr.errors import GreenrError
from serve.deps import AppState, app_state, require_model
from serve.schemas import Error, Health, ModelInfo, Readiness, ReloadRequest

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health)
async def health() -> dict:
    """The process is alive (says nothing about the model)."""
    return {"status": "ok"}


@router.get("/ready", response_model=Readiness, responses={503: {"model": Readiness}})
async def ready(state: Annotated[AppState, Depends(app_state)]) -> JSONResponse:
    """200 once a model is loaded; 503 with the reason (loading, or the load error) before."""
    store = state.store
    loaded = store.current
    body = Readiness(
        ready=loaded is not None, loading=store.loading, error=store.error, model=loaded.version() if loaded else None
    )
    return JSONResponse(body.model_dump(), status_code=200 if loaded else 503)


@router.get("/model", response_model=ModelInfo, responses={503: {"model": Error}})
async def model_info(state: Annotated[AppState, Depends(app_state)]) -> dict:
    """Arch, classes, image size, checkpoint hashes, git revision and evaluate metrics."""
    return require_model(state).describe()


@router.post(
    "/model/reload",
    response_model=ModelInfo,
    responses={401: {"model": Error}, 403: {"model": Error}, 409: {"model": Error}},
)
async def reload(
    state: Annotated[AppState, Depends(app_state)],
    body: ReloadRequest | None = None,
    authorization: Annotated[str | None, Header()] = None,
) -> dict:
    """Load another revision (`{"rev": ...}`; default the configured one) and swap it in.

    Requests in flight finish on the model they started with. Needs `Authorization: Bearer
    <RELOAD_TOKEN>`; with no RELOAD_TOKEN set, reloading is disabled.
    """
    token = state.settings.reload_token
    if not token:
        raise HTTPException(403, detail="reload is disabled: set RELOAD_TOKEN to enable it")
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
        raise HTTPException(401, detail="missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})
    try:
        loaded = await run_in_threadpool(state.store.load, body.rev if body else None)
    except GreenrError as err:
        current = state.store.current
        still = f"; still serving {current.ckpt.sha256[:12]}" if current else ""
        raise HTTPException(409, detail=f"reload failed: {err}{still}") from None
    state.adopt(loaded)
    return loaded.describe()
