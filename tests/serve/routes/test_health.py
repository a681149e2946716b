"""/health and /ready: alive at once, ready once the model is loaded, clear errors for a bad model file."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from greenr.data.upload_corpus import encode, photo
from greenr.model import checkpoint
from serve.main import create_app
from tests.helpers.serving import make_settings, wait_ready


def test_health_and_ready(client: TestClient, ckpt_path: Path) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["model"]["sha256"] == checkpoint.load(ckpt_path).sha256


def test_not_ready_before_load_then_clear_error_for_corrupt_checkpoint(tmp_path: Path) -> None:
    bad = tmp_path / "stage-1.pth"
    bad.write_bytes(b"this is not a checkpoint")
    with TestClient(create_app(make_settings(bad)), raise_server_exceptions=False) as test_client:
        with pytest.raises(AssertionError, match="not a readable checkpoint"):
            wait_ready(test_client)
        ready = test_client.get("/ready")
        assert ready.status_code == 503 and "not a readable checkpoint" in ready.json()["error"]
        response = test_client.post("/predict", files={"file": ("a.png", encode(photo(), "PNG"), "image/png")})
        assert response.status_code == 503
        assert "model not ready" in response.json()["detail"]
        assert test_client.get("/health").status_code == 200  # alive, not crash-looping
        assert test_client.get("/model").status_code == 503


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path / "absent.pth")), raise_server_exceptions=False) as test_client:
        with pytest.raises(AssertionError, match="does not exist"):
            wait_ready(test_client)
        assert "dvc pull" in test_client.get("/ready").json()["error"]


def test_an_app_that_was_never_started_is_alive_and_says_it_is_not_started(ckpt_path: Path) -> None:
    """Mounted in another ASGI app, or a TestClient outside `with`: no lifespan ran, so no model.
    Liveness needs none, a request without its file is wrong whatever the state, the rest waits."""
    never_started = TestClient(create_app(make_settings(ckpt_path)), raise_server_exceptions=False)
    assert never_started.get("/health").status_code == 200
    missing = never_started.post("/predict")
    assert missing.status_code == 422 and missing.json()["request_id"], missing.text
    assert never_started.post("/predict/batch").status_code == 422
    image = {"file": ("a.jpg", encode(photo(), "JPEG"), "image/jpeg")}
    for method, path, kwargs in (
        ("post", "/predict", {"files": image}),
        ("get", "/metrics", {}),
        ("get", "/model", {}),
        ("get", "/ready", {}),
    ):
        response = getattr(never_started, method)(path, **kwargs)
        assert response.status_code == 503, (path, response.text)
        assert "not started" in response.json()["detail"]
