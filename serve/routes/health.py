"""GET /health and GET /ready."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from serve.deps import StateDep
from serve.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health)
async def health() -> dict:
    """The process is alive (says nothing about the model)."""
    return {"status": "ok"}


@router.get("/ready", response_model=Readiness, responses={503: {"model": Readiness}})
async def ready(state: StateDep) -> JSONResponse:
    """200 once a model is loaded; 503 with the reason (loading, or the load error) before."""
    store = state.store
    loaded = store.current
    body = Readiness(
        ready=loaded is not None,
        loading=store.loading,
        error=store.error,
        model=loaded.version() if loaded else None,
    )
    return JSONResponse(body.model_dump(), status_code=200 if loaded else 503)
