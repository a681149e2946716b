"""ASGI middleware: request metrics, and a clear 503 for an app whose lifespan never ran."""

from __future__ import annotations

import json
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve.metrics import Metrics


class RequireStarted:
    """Answer 503 (JSON) to every request until the lifespan has built the app's state.

    Under uvicorn no request arrives before start-up; this matters when the app is mounted in
    another ASGI app (mounted apps get no lifespan events) or used by a TestClient outside `with`.
    """

    BODY = json.dumps(
        {"detail": "the server is not started: run it with its lifespan (`greenr serve`, or uvicorn)"}
    ).encode()

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or getattr(scope["app"].state, "greenr", None) is not None:
            await self.app(scope, receive, send)
            return
        headers = [(b"content-type", b"application/json"), (b"retry-after", b"5")]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": self.BODY})


class RequestMetricsMiddleware:
    """Counts and times every request by its route template (never the raw path)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = scope.get("route")
            # Unknown paths share one label, so scanners cannot blow up the series count.
            name = getattr(route, "path", None) or "unmatched"
            labels = (scope["method"], name, str(status))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - start)
