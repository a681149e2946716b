"""Fixtures: a checkpoint written in the test (untrained ResNet18 at 64 px), apps and a real server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from greenr import checkpoint
from greenr.model import build_model, get_arch
from serve.main import create_app
from serve.process import free_port, stop
from serve.settings import Settings

REPO = Path(__file__).resolve().parents[2]
CLASSES = ["dandelion", "grass"]
IMAGE_SIZE = 64
RELOAD_TOKEN = "test-reload-token"


def write_checkpoint(path: Path, seed: int = 0, image_size: int = IMAGE_SIZE) -> str:
    torch.manual_seed(seed)
    model = build_model("resnet18", len(CLASSES))
    return checkpoint.save(
        path, model, "resnet18", CLASSES, get_arch("resnet18").preprocessing(image_size), meta={"seed": seed}
    )


@pytest.fixture(scope="session")
def ckpt_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models") / "stage-1.pth"
    write_checkpoint(path)
    return path


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
    """Poll /ready until 200; a load error or `alive()` raising fails at once."""
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
            return body
        if body.get("error"):
            raise AssertionError(f"model failed to load: {body['error']}")
        time.sleep(0.05)
    raise AssertionError("model not ready in time")


@pytest.fixture(scope="module")
def client(ckpt_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(ckpt_path)), raise_server_exceptions=False) as test_client:
        wait_ready(test_client)
        yield test_client


class Server:
    """`python -m serve` in a subprocess on 127.0.0.1:<free port>, stopped by its PID."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = {
            **os.environ,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "GREENR_OFFLINE": "1",
            "LOG_LEVEL": "warning",
            **env,
        }
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "serve"], cwd=REPO, env=full_env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def wait_ready(self, timeout: float = 120) -> dict:
        with httpx.Client(base_url=self.url, timeout=5) as http:
            return wait_ready(http, timeout, alive=self._alive)

    def _alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        stop(self.proc)
        self._log.close()


@pytest.fixture(scope="session")
def server(ckpt_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(
        {"MODEL_PATH": str(ckpt_path), "MODEL_PULL": "false", "RELOAD_TOKEN": RELOAD_TOKEN, "THREADS": "2"},
        tmp_path_factory.mktemp("server") / "server.log",
    )
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()
