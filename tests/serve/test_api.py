"""The app as a whole: its OpenAPI document and how its routes' dependencies run (each route's own
tests are in tests/serve/routes/)."""

from __future__ import annotations

import inspect
from pathlib import Path

from fastapi.testclient import TestClient

from serve.main import create_app
from tests.helpers.serving import make_settings


def test_openapi_documents_endpoints(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/predict", "/predict/batch", "/health", "/ready", "/model", "/metrics", "/model/reload"):
        assert path in paths


def test_every_dependency_of_every_route_runs_on_the_event_loop(ckpt_path: Path) -> None:
    """FastAPI runs a plain `def` dependency in its thread pool: a thread hop per request for a
    function that only reads memory (two hops were a sixth of /predict's event-loop time)."""
    app = create_app(make_settings(ckpt_path))
    routes, pending = list(app.routes), []
    while routes:  # included routers keep their routes in the router they were built from
        route = routes.pop()
        routes.extend(getattr(getattr(route, "original_router", None), "routes", []))
        if hasattr(route, "dependant"):
            pending.append(route.dependant)
    seen = set()
    while pending:
        dependant = pending.pop()
        pending.extend(dependant.dependencies)
        if dependant.call is not None and dependant.call.__module__ == "serve.deps":
            seen.add(dependant.call.__name__)
            assert inspect.iscoroutinefunction(dependant.call), dependant.call.__name__
    assert {"get_state", "get_model"} <= seen
