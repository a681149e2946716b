"""ASGI middleware: request ids, request metrics and JSON bodies for every error answer."""

from __future__ import annotations

import json
import re
import time
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve.errors import log_error, public_message
from serve.metrics import Metrics


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


class RequestId:
    """Give every request an id: the client's `X-Request-ID` if it is sane, else a new one.

    The id is in `request.state.request_id` (error answers and their log lines carry it) and in
    the `X-Request-ID` header of every response, so a client can quote it and an operator find
    the full detail in the log. Sane: 1-128 characters of letters, digits and `._:+/=-`
    (a UUID, a trace id), so that a client cannot forge log lines or headers with it.
    """

    HEADER = "X-Request-ID"
    SANE = re.compile(r"[A-Za-z0-9._:+/=-]{1,128}")

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get(self.HEADER)
        rid = given if given and self.SANE.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                MutableHeaders(scope=message)[self.HEADER] = rid
            await send(message)

        await self.app(scope, receive, send_with_id)


class JsonErrors:
    """Every error answer is JSON with `detail` and `request_id`, as the README promises: this
    rewrites the plain-text ones that arise below the exception handlers, such as the 413 of
    Starlette's body-size limit (a route's `max_body_size`), which answers before the route runs."""

    # What a client can do about them, where the plain text says less.
    DETAILS = {413: "request body too large: over this endpoint's limit (MAX_UPLOAD_BYTES per file)"}
    # Of the plain-text body, what is read to quote it (it is a short reason phrase in practice).
    KEEP = 1024

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: Message | None = None  # the start of a plain-text error answer, sent once its body is in
        text = b""

        async def send_json_errors(message: Message) -> None:
            nonlocal held, text
            if message["type"] == "http.response.start":
                content_type = Headers(raw=message.get("headers", [])).get("content-type", "")
                if message["status"] >= 400 and not content_type.startswith("application/json"):
                    held = message
                    return
            elif message["type"] == "http.response.body" and held is not None:
                text = (text + message.get("body", b""))[: self.KEEP]
                if message.get("more_body"):
                    return
                status = held["status"]
                rid = scope.get("state", {}).get("request_id") or "-"
                detail = self.DETAILS.get(status) or public_message(text.decode(errors="replace")) or "error"
                log_error(rid, scope["method"], scope["path"], status, detail)
                body = json.dumps({"detail": detail, "request_id": rid}).encode()
                headers = MutableHeaders(raw=list(held.get("headers", [])))
                headers["content-type"] = "application/json"
                headers["content-length"] = str(len(body))
                await send({**held, "headers": headers.raw})
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        await self.app(scope, receive, send_json_errors)
