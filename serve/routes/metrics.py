"""GET /metrics in the Prometheus text format."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serve.deps import AppState, app_state

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response)
async def metrics(state: Annotated[AppState, Depends(app_state)]) -> Response:
    """Request counts and latencies by route and status, predictions by class, model info."""
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
