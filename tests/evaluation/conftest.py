"""Fixtures: a small git + DVC repository with two commits of different metrics, and its environment."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import project


@pytest.fixture
def metrics_repo(tmp_path: Path) -> Callable[..., Path]:
    """make(base, candidate, commit_candidate=True, params_change=None) -> the repository root."""

    def make(base: dict, candidate: dict, commit_candidate: bool = True, params_change: dict | None = None) -> Path:
        return project.metrics_repo(tmp_path / "repo", base, candidate, commit_candidate, params_change)

    return make


@pytest.fixture
def env_for(tmp_path: Path) -> Callable[[Path], dict[str, str]]:
    """The environment for running the project's commands against `root` (GREENR_ROOT)."""

    def env(root: Path) -> dict[str, str]:
        return project.project_env(root, tmp_path / "state") | {
            "GREENR_ROOT": str(root),
            "PYTHONPATH": str(project.REPO),
        }

    return env
