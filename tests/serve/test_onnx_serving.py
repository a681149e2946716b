"""Serving the ONNX export: without torch in the process, through the backend BACKEND/PRECISION choose,
said at /model, /ready and /metrics; the request path runs a lone request at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from greenr.backends.base import probabilities
from greenr.data.images import load_model_input
from greenr.hardware import native_bf16
from greenr.model import checkpoint
from greenr.model.inference import predict_logits
from serve.main import create_app
from serve.model_store import LoadedModel, ModelStore
from serve.observer import Observer
from serve.settings import Settings
from tests.helpers.images import class_image, jpeg_bytes
from tests.helpers.serving import CLASSES, PROBABILITY_ATOL, Server, make_settings, wait_ready


def reference_probs(pth: Path, data: bytes) -> np.ndarray:
    ckpt = checkpoint.load(pth)
    image = torch.from_numpy(load_model_input(data, ckpt.spec.preprocessing))[None]
    return probabilities(predict_logits(ckpt.build(), image, ckpt.spec.preprocessing).numpy(), ckpt.spec.temperature)[0]


@pytest.fixture(scope="module")
def torch_free_server(exported: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    _, onnx_path = exported
    server = Server(
        {"MODEL_PATH": str(onnx_path), "MODEL_PULL": "false", "THREADS": "2", "DRIFT_REFERENCE": ""},
        tmp_path_factory.mktemp("onnx-server") / "server.log",
        without_torch=True,
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def test_a_server_without_torch_serves_the_onnx_export(torch_free_server: Server, exported) -> None:
    """The server process cannot import torch, onnx, MLflow, ... (as in the serving image): any
    import of them would have failed the model load."""
    pth, onnx_path = exported
    with httpx.Client(base_url=torch_free_server.url, timeout=60) as http:
        wait_ready(http, timeout=60)  # serve first, time later: wait for the full choice
        info = http.get("/model").json()
        assert info["format"] == "onnx" and info["checkpoint_sha256"] == checkpoint.load(pth).sha256
        inference = info["inference"]
        assert inference["settled"], inference
        assert inference["name"] in {"onnxruntime", "openvino"} and inference["threads"] == 2
        # bf16 serves only where the CPU computes it natively; its probabilities are within
        # bf16's rounding of the reference (greenr.backends.base.TOLERANCE), fp32's within float noise.
        precision = inference["precision"]
        assert precision == "fp32" or native_bf16()
        atol = PROBABILITY_ATOL[precision]
        assert inference["reference"] == "torch fp32 logits stored at export"
        chosen = [c for c in inference["candidates"] if c["status"] == "chosen"]
        assert len(chosen) == 1 and chosen[0]["agreement"]["label_agreement"] == 1.0
        for label, seed in (("dandelion", 1), ("grass", 2)):
            data = jpeg_bytes(class_image(label, seed, size=90))
            response = http.post("/predict", files={"file": ("a.jpg", data, "image/jpeg")})
            assert response.status_code == 200, response.text
            body = response.json()
            expected = reference_probs(pth, data)
            got = np.array([body["probabilities"][name] for name in CLASSES])
            assert np.allclose(got, expected, atol=atol), (got, expected)
            assert body["prediction"] == CLASSES[int(expected.argmax())]
            assert (body["model"]["backend"], body["model"]["precision"]) == (inference["name"], precision)
        metrics = http.get("/metrics").text
        assert f'greenr_inference_backend_info{{backend="{inference["name"]}",precision="{precision}"}} 1.0' in metrics
        assert 'greenr_predictions_total{label="' in metrics


def test_precision_bf16_falls_back_to_fp32_on_a_cpu_without_it(exported) -> None:
    _, onnx_path = exported
    settings = make_settings(onnx_path, backend="openvino", precision="bf16", drift_reference=None)
    with TestClient(create_app(settings)) as client:
        ready = wait_ready(client)
        info = client.get("/model").json()["inference"]
        assert ready["model"]["backend"] == info["name"] == "openvino"
        if native_bf16():
            assert info["precision"] in ("bf16", "fp32")
        else:
            assert info["precision"] == "fp32"
            assert {"backend": "openvino", "precision": "bf16", "status": "no native bf16"}.items() <= next(
                c for c in info["candidates"] if c["precision"] == "bf16"
            ).items()
        assert (
            client.post("/predict", files={"file": ("a.jpg", jpeg_bytes(class_image("grass", 3)))}).status_code == 200
        )


def test_a_backend_that_cannot_run_the_file_is_a_clear_load_error(exported) -> None:
    _, onnx_path = exported
    with TestClient(create_app(make_settings(onnx_path, backend="torch", drift_reference=None))) as client:
        with pytest.raises(AssertionError, match="BACKEND=torch cannot run"):
            wait_ready(client)
        assert client.get("/health").status_code == 200


def test_a_lone_request_runs_at_once_in_a_batch_of_one(exported) -> None:
    assert Settings(_env_file=None).batch_wait_ms == 0  # no fixed wait by default
    _, onnx_path = exported
    settings = make_settings(onnx_path, batch_wait_ms=0, drift_reference=None)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        for seed in range(3):
            response = client.post("/predict", files={"file": ("a.jpg", jpeg_bytes(class_image("grass", seed)))})
            assert response.status_code == 200
        samples = {
            line.split()[0]: float(line.split()[-1])
            for line in client.get("/metrics").text.splitlines()
            if line.startswith("greenr_inference_batch_size_")
        }
        assert samples["greenr_inference_batch_size_count"] == 3 == samples["greenr_inference_batch_size_sum"]


def test_the_observer_runs_jobs_in_order_drains_and_drops_when_full() -> None:
    done: list[int] = []
    observer = Observer(max_pending=100)
    for i in range(20):
        observer.submit(lambda i=i: done.append(i))
    assert observer.drain(timeout=10) and done == list(range(20))
    observer.close()

    release = threading.Event()
    dropped: list[int] = []
    full = Observer(max_pending=2, on_drop=lambda: dropped.append(1))
    full.submit(release.wait)  # the worker blocks on this one
    time.sleep(0.2)
    for _ in range(5):
        full.submit(lambda: None)
    assert len(dropped) == 3  # two fit in the queue, the rest are dropped, never blocking
    assert not full.drain(timeout=0.2)
    release.set()
    assert full.drain(timeout=10)
    full.close()


def test_the_first_backend_that_agrees_serves_until_the_fastest_is_known(exported) -> None:
    """Cold start: the store serves as soon as one backend agrees, then swaps in the full choice
    (every candidate timed) and tells the app, which relabels /metrics."""
    _, onnx_path = exported
    store = ModelStore(str(onnx_path), None, False, 2, drift_reference=None)
    changed: list[LoadedModel] = []
    store.on_change = changed.append
    first = store.load()
    assert not first.selection.settled
    # Only one candidate was tried (the others were not offered: no native bf16, no INT8 export).
    assert [c.status for c in first.selection.candidates if c.agreement is not None] == ["chosen"]
    deadline = time.monotonic() + 120
    while not changed and time.monotonic() < deadline:
        time.sleep(0.05)
    (settled,) = changed
    assert store.current is settled and settled.selection.settled
    assert (settled.sha256, settled.loaded_at) == (first.sha256, first.loaded_at)  # the same model
    chosen = [c for c in settled.selection.candidates if c.status == "chosen"]
    assert len(chosen) == 1 and chosen[0].ms_batch1 and chosen[0].backend == settled.backend.name
    if settled.backend.name == first.backend.name:
        assert settled.backend is first.backend  # the warm backend stays; no second copy serves
    assert store.close(timeout=60)


def test_a_reload_during_settling_is_not_undone(exported) -> None:
    _, onnx_path = exported
    store = ModelStore(str(onnx_path), None, False, 2, drift_reference=None)
    changed: list[LoadedModel] = []
    store.on_change = changed.append
    store.load()
    second = store.load()  # before the first load's backends are timed
    deadline = time.monotonic() + 120
    while len(changed) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1)  # the first load's settling, had it not been dropped, would have swapped by now too
    assert store.close(timeout=60)  # no timing left running under the tests that follow
    assert [c.loaded_at for c in changed] == [second.loaded_at]
    assert store.current is changed[0]
