"""Fixtures: a checkpoint written in the test (untrained ResNet18 at 64 px), an app, a real server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serve.main import create_app
from tests.helpers.serving import RELOAD_TOKEN, Server, make_settings, wait_ready, write_checkpoint


@pytest.fixture(scope="session")
def ckpt_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models") / "stage-1.pth"
    write_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def client(ckpt_path: Path) -> Iterator[TestClient]:
    # fp32: these tests compare served numbers with the shared inference code at float noise; on a
    # CPU with native bf16, PRECISION=auto may serve bf16 (its bounds are tested in test_onnx_serving).
    settings = make_settings(ckpt_path, precision="fp32")
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        wait_ready(test_client)
        yield test_client


@pytest.fixture(scope="session")
def server(ckpt_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("server")
    srv = Server(
        {
            "MODEL_PATH": str(ckpt_path),
            "MODEL_PULL": "false",
            "RELOAD_TOKEN": RELOAD_TOKEN,
            "THREADS": "2",
            # Feedback on (inbox in a folder of the test's), so the fuzzer reaches /feedback and /review.
            "FEEDBACK": "on",
            "FEEDBACK_INBOX": "local",
            "REVIEW_TOKEN": "fixture-review-token",
            "GREENR_STATE_DIR": str(folder),
        },
        folder / "server.log",
    )
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()
