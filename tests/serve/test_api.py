"""API behaviour through the app's lifespan: model loading, predictions, batch, model info, reload."""

from __future__ import annotations

import concurrent.futures
import inspect
import json
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from greenr.data.images import decode_image, load_model_input
from greenr.data.upload_corpus import encode, good_corpus, photo
from greenr.model import checkpoint
from greenr.model.inference import predict_proba
from serve.main import create_app
from tests.helpers.serving import CLASSES, RELOAD_TOKEN, make_settings, wait_ready, write_checkpoint

AUTH = {"Authorization": f"Bearer {RELOAD_TOKEN}"}


def test_health_and_ready(client: TestClient, ckpt_path: Path) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["model"]["sha256"] == checkpoint.load(ckpt_path).sha256


def test_predict_matches_shared_inference(client: TestClient, ckpt_path: Path) -> None:
    data = encode(photo(), "JPEG")
    response = client.post("/predict", files={"file": ("a.jpg", data, "image/jpeg")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"prediction", "confidence", "probabilities", "model"}
    assert set(body["probabilities"]) == set(CLASSES)
    assert body["prediction"] == max(body["probabilities"], key=body["probabilities"].get)
    assert body["confidence"] == pytest.approx(max(body["probabilities"].values()))
    # Same numbers as the shared code path used by evaluation.
    ckpt = checkpoint.load(ckpt_path)
    image = torch.from_numpy(load_model_input(data, ckpt.spec.preprocessing))
    expected = predict_proba(ckpt.build(), image[None], ckpt.spec.preprocessing)[0]
    got = torch.tensor([body["probabilities"][c] for c in ckpt.spec.classes])
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("name", list(good_corpus()))
def test_every_supported_image_kind_works(client: TestClient, name: str) -> None:
    data, content_type = good_corpus()[name]
    response = client.post("/predict", files={"file": (f"{name}.img", data, content_type)})
    assert response.status_code == 200, response.text
    assert sum(response.json()["probabilities"].values()) == pytest.approx(1, abs=1e-5)


def test_model_info(client: TestClient, ckpt_path: Path) -> None:
    info = client.get("/model").json()
    ckpt = checkpoint.load(ckpt_path)
    assert info["arch"] == "resnet18" and info["classes"] == CLASSES and info["image_size"] == 64
    assert info["sha256"] == ckpt.sha256
    assert info["source"] == "workspace" and info["git_rev"]


def test_batch_mixes_good_and_bad_files(client: TestClient) -> None:
    files = [
        ("files", ("a.jpg", encode(photo(), "JPEG"), "image/jpeg")),
        ("files", ("b.txt", b"not an image", "text/plain")),
        ("files", ("c.gif", encode(photo(), "GIF"), "image/gif")),
        ("files", ("d.png", encode(photo(), "PNG"), "image/png")),
    ]
    response = client.post("/predict/batch", files=files)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == [200, 400, 415, 200]
    assert [r["filename"] for r in results] == ["a.jpg", "b.txt", "c.gif", "d.png"]
    assert results[0]["prediction"] in CLASSES and "error" in results[1]


def test_batch_over_file_count_limit(client: TestClient) -> None:
    files = [("files", (f"{i}.png", encode(photo((8, 8)), "PNG"), "image/png")) for i in range(17)]
    response = client.post("/predict/batch", files=files)
    assert response.status_code == 413
    assert "limit of 16" in response.json()["detail"]


def test_concurrent_requests_are_batched(client: TestClient) -> None:
    data = encode(photo(), "PNG")
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        statuses = list(
            pool.map(lambda _: client.post("/predict", files={"file": ("a.png", data)}).status_code, range(48))
        )
    assert statuses == [200] * 48
    metrics = client.get("/metrics").text
    # Some forward pass must have carried more than one image.
    count = sum(
        float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("greenr_inference_batch_size_count")
    )
    total = sum(
        float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("greenr_inference_batch_size_sum")
    )
    assert total > count


def test_metrics_exposes_requests_predictions_and_model(client: TestClient) -> None:
    client.post("/predict", files={"file": ("a.png", encode(photo(), "PNG"), "image/png")})
    client.post("/predict", files={"file": ("a.txt", b"nope", "text/plain")})
    text = client.get("/metrics").text
    assert 'greenr_http_requests_total{method="POST",route="/predict",status="200"}' in text
    assert 'greenr_http_requests_total{method="POST",route="/predict",status="400"}' in text
    assert "greenr_http_request_duration_seconds_bucket" in text
    assert "greenr_predictions_total{label=" in text
    assert "greenr_prediction_confidence_bucket" in text
    assert 'greenr_model_info{arch="resnet18"' in text
    client.get("/no/such/path/123")
    assert "/no/such/path/123" not in client.get("/metrics").text


def test_page_is_served(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200 and "text/html" in response.headers["content-type"]
    assert 'id="drop"' in response.text and "predict" in response.text


def test_openapi_documents_endpoints(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/predict", "/predict/batch", "/health", "/ready", "/model", "/metrics", "/model/reload"):
        assert path in paths


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


def test_reload_needs_the_token_and_swaps_atomically(tmp_path: Path) -> None:
    path = tmp_path / "stage-1.pth"
    first = write_checkpoint(path, seed=0)
    with TestClient(create_app(make_settings(path)), raise_server_exceptions=False) as test_client:
        assert wait_ready(test_client)["model"]["sha256"] == first
        assert test_client.post("/model/reload").status_code == 401
        assert test_client.post("/model/reload", headers={"Authorization": "Bearer wrong"}).status_code == 401
        second = write_checkpoint(path, seed=1)
        data = encode(photo(), "PNG")
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            in_flight = [pool.submit(test_client.post, "/predict", files={"file": ("a.png", data)}) for _ in range(24)]
            reloaded = test_client.post("/model/reload", headers=AUTH)
            responses = [f.result() for f in in_flight]
        assert reloaded.status_code == 200, reloaded.text
        assert reloaded.json()["sha256"] == second
        assert all(r.status_code == 200 for r in responses)
        assert {r.json()["model"]["sha256"] for r in responses} <= {first, second}
        after = test_client.post("/predict", files={"file": ("a.png", data)}).json()
        assert after["model"]["sha256"] == second
        # A failed reload keeps the old model serving.
        path.write_bytes(b"corrupt")
        failed = test_client.post("/model/reload", headers=AUTH)
        assert failed.status_code == 409 and "still serving" in failed.json()["detail"]
        assert test_client.post("/predict", files={"file": ("a.png", data)}).status_code == 200


def test_reload_disabled_without_token(ckpt_path: Path) -> None:
    with TestClient(create_app(make_settings(ckpt_path, reload_token=None))) as test_client:
        wait_ready(test_client)
        response = test_client.post("/model/reload", headers=AUTH)
        assert response.status_code == 403 and "RELOAD_TOKEN" in response.json()["detail"]


def test_exif_rotation_is_applied(client: TestClient) -> None:
    from greenr.data.upload_corpus import exif_rotated_jpeg

    rotated, upright = exif_rotated_jpeg()
    assert decode_image(rotated).size == decode_image(upright).size == (80, 60)
    a = client.post("/predict", files={"file": ("r.jpg", rotated, "image/jpeg")}).json()["probabilities"]
    b = client.post("/predict", files={"file": ("u.jpg", upright, "image/jpeg")}).json()["probabilities"]
    for name in CLASSES:
        assert a[name] == pytest.approx(b[name], abs=2e-3)
    assert json.dumps(a)  # plain floats


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


def test_a_request_without_its_file_answers_422_while_the_model_loads(tmp_path: Path) -> None:
    """The request's shape is checked before the model's state: no model (a missing file) still
    answers 422 to a request that could never succeed, and 503 to one that could."""
    with TestClient(create_app(make_settings(tmp_path / "absent.pth")), raise_server_exceptions=False) as client:
        assert client.post("/predict").status_code == 422
        assert client.post("/predict", content=b"x", headers={"content-type": "image/gif"}).status_code == 415
        image = {"file": ("a.jpg", encode(photo(), "JPEG"), "image/jpeg")}
        assert client.post("/predict", files=image).status_code == 503


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
