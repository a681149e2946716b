"""GET /health and GET /ready."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from serve.deps import StateDep
from serve.errors import public_message
from serve.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health)
async def health() -> dict:
    """The process is alive (says nothing about the model)."""
    return {"status": "ok"}


@router.get("/ready", response_model=Readiness, responses={503: {"model": Readiness}})
async def ready(state: StateDep) -> JSONResponse:
    """200 once a model is loaded; 503 with the reason (loading, or the load error) before.

    When ready, a failed reload shows as `last_reload_error` (the old model keeps serving), never
    as `error`, so a monitor can tell it from a server that has no model.
    """
    store = state.store
    loaded = store.current
    body = Readiness(
        ready=loaded is not None,
        loading=store.loading,
        error=None if loaded else public_message(store.error),
        last_reload_error=public_message(store.last_reload_error) if loaded else None,
        model=loaded.version() if loaded else None,
    )
    return JSONResponse(body.model_dump(), status_code=200 if loaded else 503)
