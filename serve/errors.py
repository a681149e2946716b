"""What clients see of a failure, and what the log keeps.

Error answers carry a short message a client can act on and the request's id (also in the
`X-Request-ID` header); they never carry the server's absolute paths, host names or a stack trace.
The full detail goes to the log under the same request id. The handlers are registered in
serve/main.py.

Client input is quoted, in answers and in the log, by a short prefix only (`clip`): a client must
not be able to make the server send or write megabytes by sending them.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, overload

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from greenr.errors import GreenrError

log = logging.getLogger("serve.errors")
MAX_MESSAGE = 300
# Characters of a client's value quoted in an answer, and in a log line (route paths, methods).
ECHO_CHARS = 64
LOG_CHARS = 200
# A logged detail (the server's own words, client values in it already clipped), and how many
# errors / list items / levels of a validation error's structure an answer keeps.
LOG_DETAIL_CHARS = 2000
MAX_ITEMS = 10
MAX_DEPTH = 4
# Top-level folders a path may start with, beyond those of this machine's own root.
COMMON_ROOTS = ("home", "root", "tmp", "var", "usr", "opt", "srv", "mnt", "etc", "Users", "private", "app", "work")
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>()\[\]]*")
_IPV4 = re.compile(r"\b(?!127\.0\.0\.1\b)(?:\d{1,3}\.){3}\d{1,3}\b")
_SPACE = re.compile(r"\s+")
_CONTROL = re.compile(r"\x1b\[[0-9;]*[A-Za-z]|[\x00-\x1f\x7f]")  # terminal colours, control characters


@lru_cache(maxsize=1)
def _redactions() -> list[tuple[re.Pattern[str], str]]:
    try:
        roots = set(os.listdir("/"))
    except OSError:
        roots = set()
    names = "|".join(sorted(map(re.escape, roots | set(COMMON_ROOTS)), key=len, reverse=True))
    rules = [
        (_URL, "<url>"),
        # /top-level-folder[/more]: a path on this machine (routes such as /model/reload are not).
        (re.compile(rf"(?<![\w.~/-])/(?:{names})(?![\w.-])(?:/[^\s'\"():;,]*)?"), "<path>"),
        (re.compile(r"(?<![\w/])~/[^\s'\"():;,]*"), "<path>"),
        (_IPV4, "<address>"),
    ]
    host = socket.gethostname()
    if host and host.lower() != "localhost":
        rules.append((re.compile(rf"\b{re.escape(host)}\b", re.IGNORECASE), "<host>"))
    return rules


def public_message(detail: str | None) -> str | None:
    """`detail` as a client may see it: on one line, without paths, URLs, addresses, this
    machine's name or terminal colours, and short (the log keeps the whole of it)."""
    if detail is None:
        return None
    text = _CONTROL.sub("", _SPACE.sub(" ", detail.replace("\n  fix: ", "; fix: "))).strip()
    for pattern, replacement in _redactions():
        text = pattern.sub(replacement, text)
    if len(text) <= MAX_MESSAGE:
        return text
    # Keep both ends: what failed comes first, the fix (and "still serving ...") last.
    head = MAX_MESSAGE * 2 // 3
    return f"{text[:head]}…{text[-(MAX_MESSAGE - head - 1) :]}"


@overload
def clip(value: str, limit: int = ECHO_CHARS) -> str: ...
@overload
def clip(value: None, limit: int = ECHO_CHARS) -> None: ...
def clip(value: str | None, limit: int = ECHO_CHARS) -> str | None:
    """A client's value as the server quotes it: its first `limit` characters, and `…(N chars)` for the rest."""
    if value is None or len(value) <= limit:
        return value
    return f"{value[:limit]}…({len(value)} chars)"


def _bounded(value: Any, depth: int = 0) -> Any:
    """A JSON structure from client input, cut down: short strings, few items, shallow."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if depth >= MAX_DEPTH:
        return "…"
    if isinstance(value, dict):
        return {clip(str(k)): _bounded(v, depth + 1) for k, v in list(value.items())[:MAX_ITEMS]}
    if isinstance(value, (list, tuple)):
        return [_bounded(v, depth + 1) for v in list(value)[:MAX_ITEMS]]
    return clip(value if isinstance(value, str) else str(value))


def bounded_validation_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """FastAPI's 422 list with every client value (input, field names) cut to a short prefix."""
    return [
        {
            key: clip(str(value), LOG_CHARS) if key == "msg" else _bounded(value)
            for key, value in error.items()
            if key != "url"  # pydantic's documentation link: noise
        }
        for error in errors[:MAX_ITEMS]
    ]


def log_line(text: str) -> str:
    """A detail as it is logged: whole when short, else both ends (what failed, and the fix)."""
    if len(text) <= LOG_DETAIL_CHARS:
        return text
    head = LOG_DETAIL_CHARS * 2 // 3
    return f"{text[:head]} …({len(text) - LOG_DETAIL_CHARS} chars)… {text[-(LOG_DETAIL_CHARS - head) :]}"


def request_id(request: Request) -> str:
    """The id serve.middleware.RequestId gave this request."""
    return getattr(request.state, "request_id", None) or "-"


def _answer(request: Request, status: int, body: dict, headers: Mapping[str, str] | None = None) -> JSONResponse:
    rid = request_id(request)
    return JSONResponse(
        {**body, "request_id": rid}, status_code=status, headers={**(headers or {}), "X-Request-ID": rid}
    )


def log_error(rid: str, method: str, path: str, status: int, detail: object) -> None:
    """One bounded log line per error answer, under its request id."""
    # Bad uploads are the client's business (info); refused tokens, failed reloads and 5xx are ours.
    level = logging.INFO if status < 500 and status not in (401, 403, 409) else logging.WARNING
    log.log(
        level,
        "request %s: %s %s -> %d: %s",
        rid,
        clip(method, LOG_CHARS),
        clip(path, LOG_CHARS),
        status,
        log_line(str(detail)),
    )


def _log(request: Request, status: int, detail: object) -> None:
    log_error(request_id(request), request.method, request.url.path, status, detail)


async def http_error(request: Request, exc: Exception) -> Response:
    """HTTPException (ours and Starlette's 404/405): the detail, made public."""
    assert isinstance(exc, HTTPException)
    _log(request, exc.status_code, exc.detail)
    if exc.status_code in (204, 304) or exc.status_code < 200:
        return Response(status_code=exc.status_code, headers=exc.headers)
    detail = public_message(exc.detail) if isinstance(exc.detail, str) else exc.detail
    return _answer(request, exc.status_code, {"detail": detail}, exc.headers)


async def validation_error(request: Request, exc: Exception) -> Response:
    """422: which field is missing or malformed (FastAPI's list of errors)."""
    assert isinstance(exc, RequestValidationError)
    errors = bounded_validation_errors(jsonable_encoder(exc.errors()))
    _log(request, 422, errors)
    return _answer(request, 422, {"detail": errors})


async def greenr_error(request: Request, exc: Exception) -> Response:
    """An expected failure no route turned into an answer: what to do, without the details."""
    assert isinstance(exc, GreenrError)
    _log(request, 500, exc)
    return _answer(request, 500, {"detail": public_message(str(exc))})


async def unexpected_error(request: Request, exc: Exception) -> Response:
    """Anything else: a generic 500; the stack trace goes to the log only."""
    log.error(
        "request %s: %s %s -> 500: unhandled %s",
        request_id(request),
        clip(request.method, LOG_CHARS),
        clip(request.url.path, LOG_CHARS),
        type(exc).__name__,
        exc_info=exc,
    )
    return _answer(request, 500, {"detail": "internal error; the server log has the details under this request id"})
