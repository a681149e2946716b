"""GET /model and POST /model/reload."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException
from starlette.concurrency import run_in_threadpool

from greenr.errors import GreenrError
from serve.deps import ModelDep, StateDep
from serve.schemas import Error, ModelInfo, ReloadRequest

router = APIRouter(tags=["model"])


@router.get("/model", response_model=ModelInfo, responses={503: {"model": Error}})
async def model_info(loaded: ModelDep) -> dict:
    """Arch, classes, image size, checkpoint hashes, git revision and evaluate metrics."""
    return loaded.describe()


@router.post(
    "/model/reload",
    response_model=ModelInfo,
    responses={401: {"model": Error}, 403: {"model": Error}, 409: {"model": Error}},
)
async def reload(
    state: StateDep,
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
