"""The server under test: a small checkpoint, settings for an in-process app, and `python -m serve`
as a real process on a free loopback port."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import torch
from fastapi.testclient import TestClient

from greenr.backends.export import export_onnx
from greenr.model import checkpoint
from greenr.model.architectures import build_model, get_arch
from greenr.model.spec import ModelSpec
from greenr.processes import ServerProcess
from serve.settings import Settings
from tests.helpers.project import REPO

CLASSES = ["dandelion", "grass"]
IMAGE_SIZE = 64
RELOAD_TOKEN = "test-reload-token"
# Packages of the project's environment that the serving image (deploy/docker/serve.Dockerfile) lacks,
# and Python code that makes them unimportable for the rest of a process.
NOT_IN_SERVING_IMAGE = ("torch", "torchvision", "onnx", "mlflow", "sklearn", "matplotlib")
AS_IN_SERVING_IMAGE = f"import sys; sys.modules.update(dict.fromkeys({NOT_IN_SERVING_IMAGE!r}))"
# How far served probabilities may be from the torch fp32 reference, by the precision that serves
# (PRECISION=auto serves bf16 where the CPU computes it natively; greenr.backends.base.TOLERANCE
# bounds its logits).
PROBABILITY_ATOL = {"fp32": 1e-4, "bf16": 0.05}


def write_checkpoint(path: Path, seed: int = 0, image_size: int = IMAGE_SIZE) -> str:
    """An untrained ResNet18 at `image_size` px (fast to load, deterministic per seed)."""
    torch.manual_seed(seed)
    model = build_model("resnet18", len(CLASSES))
    spec = ModelSpec("resnet18", CLASSES, get_arch("resnet18").preprocessing(image_size), meta={"seed": seed})
    return checkpoint.save(path, model, spec)


def write_onnx(checkpoint_path: Path, onnx_path: Path) -> bytes:
    """The ONNX export of a checkpoint (what stage `export` writes), saved at `onnx_path`."""
    data = export_onnx(checkpoint.load(checkpoint_path))
    onnx_path.write_bytes(data)
    return data


def make_settings(model_path: Path, **overrides: object) -> Settings:
    values = {
        "model_path": str(model_path),
        "model_pull": False,
        "reload_token": RELOAD_TOKEN,
        "threads": 2,
        "batch_wait_ms": 2.0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


def wait_ready(
    client: TestClient | httpx.Client, timeout: float = 120, alive: Callable[[], None] = lambda: None
) -> dict:
    """Poll /ready until 200 and the backend choice has settled (so that the backend does not
    change under the test); a load error or `alive()` raising fails at once."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive()
        try:
            response = client.get("/ready")
        except httpx.TransportError:  # a real server not listening yet
            time.sleep(0.1)
            continue
        body = response.json()
        if response.status_code == 200:
            if client.get("/model").json()["inference"]["settled"]:
                return client.get("/ready").json()
            time.sleep(0.05)
            continue
        if body.get("error"):
            raise AssertionError(f"model failed to load: {body['error']}")
        time.sleep(0.05)
    raise AssertionError("model not ready in time")


class Server(ServerProcess):
    """`python -m serve` in a subprocess on 127.0.0.1:<free port>, stopped by its PID; with
    `without_torch`, what the serving image lacks (torch, ...) cannot be imported in the server."""

    def __init__(self, env: dict[str, str], log_path: Path, without_torch: bool = False) -> None:
        argv = (
            [sys.executable, "-c", f"{AS_IN_SERVING_IMAGE}; from serve.__main__ import main; main()"]
            if without_torch
            else None
        )
        super().__init__(env, log_path, argv, cwd=REPO)

    def log(self) -> str:
        return self.log_tail()
