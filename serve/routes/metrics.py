"""GET /metrics in the Prometheus text format."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serve.deps import StateDep

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response)
async def metrics(state: StateDep) -> Response:
    """Request counts and latencies by route and status, predictions by class, model info."""
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
