"""System tools the serve tests need; missing ones fail with the install step, never skip."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def require_tool(name: str, apt_package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"`{name}` is not installed: run `apt-get install -y {apt_package}` (`make test` installs it first)",
            pytrace=False,
        )
    return path


def require_chromium() -> str:
    if not Path(CHROMIUM).is_file():
        pytest.fail(
            f"{CHROMIUM} is missing: run `apt-get install -y chromium` (`make test` installs it first)", pytrace=False
        )
    return CHROMIUM
