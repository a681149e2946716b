"""Dependencies the routes declare: the app's state and the model currently served.

All are `async def` though none awaits: FastAPI runs a plain `def` dependency in its thread pool,
a thread hop per dependency per request (two on /predict), for functions that only read memory.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request

from serve.feedback import FeedbackService
from serve.model_store import LoadedModel
from serve.state import AppState

NOT_STARTED = "the server is not started: run it with its lifespan (`greenr serve`, or uvicorn)"


async def get_state(request: Request) -> AppState:
    """The state the lifespan built; 503 when the app was never started: mounted in another ASGI
    app (mounted apps get no lifespan events) or used by a TestClient outside `with`."""
    state: AppState | None = getattr(request.app.state, "greenr", None)
    if state is None:
        raise HTTPException(503, detail=NOT_STARTED, headers={"Retry-After": "5"})
    return state


StateDep = Annotated[AppState, Depends(get_state)]


async def get_model(state: StateDep) -> LoadedModel:
    """The current model, or 503 saying why there is none."""
    loaded = state.store.current
    if loaded is None:
        why = state.store.error or "the model is still loading"
        raise HTTPException(503, detail=f"model not ready: {why}", headers={"Retry-After": "5"})
    return loaded


ModelDep = Annotated[LoadedModel, Depends(get_model)]


async def get_feedback(state: StateDep) -> FeedbackService:
    """The feedback inbox service (what it may do depends on the settings; see routes/feedback.py)."""
    if state.feedback is None:
        raise HTTPException(503, detail="feedback is not set up in this app")
    return state.feedback


FeedbackDep = Annotated[FeedbackService, Depends(get_feedback)]


async def bearer_token(authorization: Annotated[str | None, Header()] = None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header; None without one."""
    scheme, _, token = (authorization or "").partition(" ")
    return token if scheme.lower() == "bearer" and token else None


BearerDep = Annotated[str | None, Depends(bearer_token)]
