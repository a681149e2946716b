"""The model comes from DVC: pulled when missing, or read at MODEL_REV without a checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serve.main import create_app
from tests.helpers.serving import make_settings, wait_ready, write_checkpoint


def sh(root: Path, *cmd: str) -> str:
    done = subprocess.run(
        cmd,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={
            **os.environ,
            "DVC_NO_ANALYTICS": "1",
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@example.com",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@example.com",
        },
    )
    assert done.returncode == 0, f"{cmd}: {done.stdout}\n{done.stderr}"
    return done.stdout.strip()


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A git + DVC project with a local-folder remote and two committed checkpoints."""
    root = tmp_path_factory.mktemp("project")
    remote = tmp_path_factory.mktemp("remote")
    dvc = (sys.executable, "-m", "dvc")
    sh(root, "git", "init", "-q", "-b", "main")
    sh(root, *dvc, "init", "-q")
    sh(root, *dvc, "config", "core.analytics", "false")
    sh(root, *dvc, "remote", "add", "-d", "local", str(remote))
    (root / "dvc.yaml").write_text("stages: {}\n")
    (root / "params.yaml").write_text("{}\n")
    shas = {}
    for tag, seed, accuracy in (("v1", 1, 0.81), ("v2", 2, 0.92)):
        shas[tag] = write_checkpoint(root / "models" / "stage-1.pth", seed=seed)
        (root / "metrics").mkdir(exist_ok=True)
        (root / "metrics" / "evaluate.json").write_text(json.dumps({"accuracy": accuracy}))
        sh(root, *dvc, "add", "-q", "models/stage-1.pth")
        sh(root, "git", "add", "-A")
        sh(root, "git", "commit", "-qm", tag)
        sh(root, "git", "tag", tag)
        sh(root, *dvc, "push", "-q")
    return root, shas


def test_model_rev_reads_that_version_from_the_remote(dvc_repo, monkeypatch: pytest.MonkeyPatch) -> None:
    root, shas = dvc_repo
    monkeypatch.setenv("GREENR_ROOT", str(root))
    shutil.rmtree(root / ".dvc" / "cache", ignore_errors=True)  # only the remote has v1 now
    settings = make_settings(Path("models/stage-1.pth"), model_rev="v1")
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        info = client.get("/model").json()
    assert info["sha256"] == shas["v1"]
    assert info["source"] == "rev:v1"
    assert info["git_rev"] == sh(root, "git", "rev-parse", "v1")
    assert info["evaluate_metrics"] == {"accuracy": 0.81}


def test_missing_workspace_checkpoint_is_pulled(dvc_repo, monkeypatch: pytest.MonkeyPatch) -> None:
    root, shas = dvc_repo
    monkeypatch.setenv("GREENR_ROOT", str(root))
    (root / "models" / "stage-1.pth").unlink(missing_ok=True)
    settings = make_settings(Path("models/stage-1.pth"), model_pull=True)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        info = client.get("/model").json()
    assert info["sha256"] == shas["v2"] and info["source"] == "workspace"
    assert info["evaluate_metrics"] == {"accuracy": 0.92}
    assert (root / "models" / "stage-1.pth").is_file()


def test_unknown_rev_is_a_clear_error(dvc_repo, monkeypatch: pytest.MonkeyPatch) -> None:
    root, _ = dvc_repo
    monkeypatch.setenv("GREENR_ROOT", str(root))
    settings = make_settings(Path("models/stage-1.pth"), model_rev="no-such-tag")
    with TestClient(create_app(settings)) as client, pytest.raises(AssertionError, match="is not a git revision"):
        wait_ready(client)
