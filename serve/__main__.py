"""`python -m serve`: run the server with uvicorn on HOST:PORT (default 127.0.0.1:8000)."""

from __future__ import annotations

import uvicorn

from greenr.errors import setup_logging
from serve.main import create_app
from serve.settings import get_settings


def main() -> None:
    settings = get_settings()
    setup_logging()
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
