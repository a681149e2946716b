"""A real server (uvicorn, no torch) on an ONNX export with its INT8 export beside it: PRECISION=int8
serves the INT8 file where the export certified it and /model says so; `POST /predict` also takes
the image as the raw body, with the multipart route's answers and limits."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from greenr.backends.loading import build
from greenr.backends.model_file import int8_path, load_model_file, read_model
from greenr.data.images import load_model_input
from tests.backends.test_int8 import quantized
from tests.helpers.images import class_image, jpeg_bytes
from tests.helpers.serving import CLASSES, Server

MAX_UPLOAD = 64 * 1024


@pytest.fixture(scope="module")
def model_dir(exported: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The export and its INT8 file, certified for onnxruntime only."""
    folder = tmp_path_factory.mktemp("int8-model")
    (folder / "stage-1.onnx").write_bytes(exported[1].read_bytes())
    int8_path(folder / "stage-1.onnx").write_bytes(quantized(exported[1], ["onnxruntime"]))
    return folder


@pytest.fixture(scope="module")
def int8_server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {
        "MODEL_PATH": str(model_dir / "stage-1.onnx"),
        "MODEL_PULL": "false",
        "THREADS": "2",
        "DRIFT_REFERENCE": "",
        "PRECISION": "int8",
        "MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
    }
    server = Server(env, tmp_path_factory.mktemp("int8-server") / "server.log", without_torch=True)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def test_precision_int8_serves_the_certified_int8_export(int8_server: Server, model_dir: Path) -> None:
    int8_file = read_model(int8_path(model_dir / "stage-1.onnx").read_bytes(), "stage-1.int8.onnx")
    with httpx.Client(base_url=int8_server.url, timeout=60) as http:
        inference = http.get("/model").json()["inference"]
        assert (inference["name"], inference["precision"]) == ("onnxruntime", "int8"), inference
        assert inference["int8"]["sha256"] == int8_file.sha256 and inference["int8"]["backends"] == ["onnxruntime"]
        status = {(c["backend"], c["precision"]): c["status"] for c in inference["candidates"]}
        assert status[("openvino", "int8")] == "not certified at export"
        chosen = next(c for c in inference["candidates"] if c["status"] == "chosen")
        assert chosen["agreement"]["agrees"] and chosen["agreement"]["tolerance"] > 0.4  # its own bound
        # The answers are the INT8 file's, as the same backend computes them in this process.
        local = build("onnxruntime", int8_file, "int8", 2)
        data = jpeg_bytes(class_image("dandelion", 5, size=90))
        body = http.post("/predict", files={"file": ("a.jpg", data, "image/jpeg")}).json()
        expected = local.predict_proba(load_model_input(data, int8_file.spec.preprocessing)[None])[0]
        assert np.allclose([body["probabilities"][c] for c in CLASSES], expected, atol=1e-4)
        assert (body["model"]["backend"], body["model"]["precision"]) == ("onnxruntime", "int8")
        assert 'precision="int8"' in http.get("/metrics").text


def test_the_raw_body_route_answers_like_multipart(int8_server: Server) -> None:
    with httpx.Client(base_url=int8_server.url, timeout=60) as http:
        for label, seed, kind in (("dandelion", 1, "image/jpeg"), ("grass", 2, "image/jpeg; charset=binary")):
            data = jpeg_bytes(class_image(label, seed, size=90))
            raw = http.post("/predict", content=data, headers={"content-type": kind})
            multipart = http.post("/predict", files={"file": ("a.jpg", data, "image/jpeg")})
            assert raw.status_code == multipart.status_code == 200, raw.text
            assert raw.json()["probabilities"] == pytest.approx(multipart.json()["probabilities"], abs=1e-6)
        assert "image/jpeg" in http.get("/openapi.json").json()["paths"]["/predict"]["post"]["requestBody"]["content"]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "detail"),
    [
        (b"\xff" * (MAX_UPLOAD + 1), "image/jpeg", 413, "over the limit"),
        (b"", "image/png", 400, "empty"),
        (b"not an image at all", "image/webp", 400, "not a recognised image"),
        (b"GIF89a....", "image/gif", 415, "unsupported body type"),
        (b"{}", "application/json", 422, "file"),
    ],
)
def test_the_raw_body_route_rejects_bad_bodies_with_4xx(
    int8_server: Server, body: bytes, content_type: str, status: int, detail: str
) -> None:
    with httpx.Client(base_url=int8_server.url, timeout=60) as http:
        response = http.post("/predict", content=body, headers={"content-type": content_type})
        assert response.status_code == status, response.text
        assert detail in str(response.json()["detail"]) and response.json()["request_id"]


def test_without_an_int8_file_model_says_why(exported: tuple[Path, Path], tmp_path: Path) -> None:
    (tmp_path / "stage-1.onnx").write_bytes(exported[1].read_bytes())
    env = {"MODEL_PATH": str(tmp_path / "stage-1.onnx"), "MODEL_PULL": "false", "THREADS": "1", "DRIFT_REFERENCE": ""}
    server = Server({**env, "PRECISION": "int8"}, tmp_path / "server.log", without_torch=True)
    try:
        server.wait_ready()
        inference = httpx.get(f"{server.url}/model", timeout=30).json()["inference"]
        assert inference["precision"] == "fp32" and "absent" in inference["int8"]["absent"]
        assert load_model_file(tmp_path / "stage-1.onnx").format == "onnx"
    finally:
        server.stop()
