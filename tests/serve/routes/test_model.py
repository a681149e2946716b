"""/model and /reload: what is served, and swapping it atomically behind a token."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

from fastapi.testclient import TestClient

from greenr.data.upload_corpus import encode, photo
from greenr.model import checkpoint
from serve.main import create_app
from tests.helpers.serving import CLASSES, RELOAD_TOKEN, make_settings, wait_ready, write_checkpoint

AUTH = {"Authorization": f"Bearer {RELOAD_TOKEN}"}


def test_model_info(client: TestClient, ckpt_path: Path) -> None:
    info = client.get("/model").json()
    ckpt = checkpoint.load(ckpt_path)
    assert info["arch"] == "resnet18" and info["classes"] == CLASSES and info["image_size"] == 64
    assert info["sha256"] == ckpt.sha256
    assert info["source"] == "workspace" and info["git_rev"]


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
