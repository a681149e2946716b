"""The real thing: `python -m serve` under uvicorn on 127.0.0.1, talked to over TCP."""

from __future__ import annotations

import httpx

from greenr.data.upload_corpus import encode, photo
from greenr.model import checkpoint
from tests.helpers.serving import CLASSES, Server


def test_predict_over_tcp(server: Server, ckpt_path) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.get("/health").json() == {"status": "ok"}
        response = http.post("/predict", files={"file": ("a.jpg", encode(photo(), "JPEG"), "image/jpeg")})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["prediction"] in CLASSES
        assert body["model"]["sha256"] == checkpoint.load(ckpt_path).sha256
        model = http.get("/model").json()
        assert model["image_size"] == 64
        docs = http.get("/docs")
        assert docs.status_code == 200
        assert "greenr_model_ready 1.0" in http.get("/metrics").text


def test_binds_loopback_only(server: Server) -> None:
    listening = open("/proc/net/tcp").read().splitlines()[1:]
    port_hex = f"{server.port:04X}"
    local = [
        line.split()[1] for line in listening if line.split()[1].endswith(f":{port_hex}") and line.split()[3] == "0A"
    ]
    assert local == ["0100007F:" + port_hex]
