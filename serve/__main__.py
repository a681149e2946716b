"""`python -m serve`: run the server with uvicorn on HOST:PORT (default 127.0.0.1:8000).

One process: the model runs on every core in it (THREADS), and the event loop only moves bytes.
More worker processes would hold one model copy each and compete for the same cores. uvloop and
httptools (uvicorn[standard]) run the event loop and parse HTTP in C.
"""

from __future__ import annotations

import importlib.util

import uvicorn

from greenr.errors import setup_logging
from serve.main import create_app
from serve.settings import get_settings


def _fastest(preferred: str, fallback: str) -> str:
    return preferred if importlib.util.find_spec(preferred) else fallback


def main() -> None:
    settings = get_settings()
    setup_logging()
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # Requests are counted and timed in /metrics; a log line per request costs the hot path.
        access_log=settings.access_log,
        loop=_fastest("uvloop", "asyncio"),
        http=_fastest("httptools", "h11"),
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
