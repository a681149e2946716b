"""A small git repository with two commits of different metrics, for the gate and the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def metrics(accuracy: float, f1: float, interval: tuple[float, float] = (0.8, 0.95)) -> dict:
    return {
        "accuracy": accuracy,
        "macro": {"precision": f1, "recall": f1, "f1": f1},
        "roc_auc": 0.95,
        "log_loss": 0.3,
        "n": 60,
        "per_class": {
            "dandelion": {"precision": f1, "recall": f1, "f1": f1, "support": 30},
            "grass": {"precision": f1, "recall": f1, "f1": f1, "support": 30},
        },
        "confusion_matrix": [[27, 3], [3, 27]],
        "bootstrap": {"confidence": 0.95, "samples": 1000, "accuracy": list(interval), "macro_f1": list(interval)},
    }


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def metrics_repo(tmp_path: Path) -> Callable[..., Path]:
    """make(base, candidate, commit_candidate=True): base committed, candidate on top."""

    def make(base: dict, candidate: dict, commit_candidate: bool = True, params_change: dict | None = None) -> Path:
        root = tmp_path / "repo"
        root.mkdir()
        git(root, "init", "-q", "-b", "main")
        git(root, "config", "user.email", "t@example.invalid")
        git(root, "config", "user.name", "test")
        dvc = Path(sys.executable).parent / "dvc"
        subprocess.run(
            [str(dvc), "init", "-q"],
            cwd=root,
            check=True,
            capture_output=True,
            env={**os.environ, "DVC_NO_ANALYTICS": "1"},
        )
        subprocess.run([str(dvc), "config", "core.analytics", "false"], cwd=root, check=True, capture_output=True)
        (root / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        (root / "metrics").mkdir()
        (root / "metrics" / "evaluate.json").write_text(json.dumps(base, indent=2))
        git(root, "add", ".")
        git(root, "commit", "-qm", "base")
        (root / "metrics" / "evaluate.json").write_text(json.dumps(candidate, indent=2))
        if params_change:
            for section, values in params_change.items():
                params[section].update(values)
            (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        if commit_candidate:
            git(root, "commit", "-qam", "candidate")
        return root

    return make


@pytest.fixture
def env_for(tmp_path: Path) -> Callable[[Path], dict[str, str]]:
    def env(root: Path) -> dict[str, str]:
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        out = {
            **os.environ,
            "PATH": path,
            "GREENR_ROOT": str(root),
            "GREENR_STATE_DIR": str(tmp_path / "state"),
            "GREENR_OFFLINE": "1",
            "DVC_NO_ANALYTICS": "1",
            "PYTHONPATH": str(REPO),
        }
        out.pop("MLFLOW_TRACKING_URI", None)
        return out

    return env
