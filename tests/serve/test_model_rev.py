"""The model comes from DVC: pulled when missing, or read at MODEL_REV without a checkout; rollback
(MODEL_REV, POST /model/reload {"rev": ...}) to any commit, for the ONNX export and the checkpoint."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serve.main import create_app
from tests.helpers.serving import RELOAD_TOKEN, make_settings, wait_ready, write_checkpoint, write_onnx


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
    """A git + DVC project with a local-folder remote and two commits (tags v1, v2), each with its
    checkpoint and that checkpoint's ONNX export; `shas` has both by tag: "v1" and "v1.onnx"."""
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
        onnx = write_onnx(root / "models" / "stage-1.pth", root / "models" / "stage-1.onnx")
        shas[f"{tag}.onnx"] = hashlib.sha256(onnx).hexdigest()
        (root / "metrics").mkdir(exist_ok=True)
        (root / "metrics" / "evaluate.json").write_text(json.dumps({"accuracy": accuracy}))
        sh(root, *dvc, "add", "-q", "models/stage-1.pth", "models/stage-1.onnx")
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


@pytest.mark.parametrize("model", ["models/stage-1.onnx", "models/stage-1.pth"])
def test_model_rev_at_an_earlier_commit_serves_that_commits_file_in_its_format(
    dvc_repo, monkeypatch: pytest.MonkeyPatch, model: str
) -> None:
    """MODEL_REV=HEAD~1: the file of that commit from the remote (no cache), its format read from its
    bytes, not from a `@rev` decoration of its name (the ONNX export went to the torch loader)."""
    root, shas = dvc_repo
    monkeypatch.setenv("GREENR_ROOT", str(root))
    shutil.rmtree(root / ".dvc" / "cache", ignore_errors=True)  # only the remote has it
    onnx = model.endswith(".onnx")
    settings = make_settings(Path(model), model_rev="HEAD~1")
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        info = client.get("/model").json()
    assert info["sha256"] == shas["v1.onnx" if onnx else "v1"]
    assert info["format"] == ("onnx" if onnx else "torch") and info["backend"] != ("torch" if onnx else "")
    assert info["git_rev"] == sh(root, "git", "rev-parse", "v1") and info["source"] == "rev:HEAD~1"
    assert info["evaluate_metrics"] == {"accuracy": 0.81}


@pytest.mark.parametrize("model", ["models/stage-1.onnx", "models/stage-1.pth"])
def test_reload_rolls_back_to_any_rev_and_forward_again(dvc_repo, monkeypatch: pytest.MonkeyPatch, model: str) -> None:
    root, shas = dvc_repo
    monkeypatch.setenv("GREENR_ROOT", str(root))
    suffix = ".onnx" if model.endswith(".onnx") else ""
    auth = {"Authorization": f"Bearer {RELOAD_TOKEN}"}
    settings = make_settings(Path(model), model_pull=True)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        wait_ready(client)
        assert client.get("/model").json()["sha256"] == shas[f"v2{suffix}"]
        for rev, tag in (("HEAD~1", "v1"), (sh(root, "git", "rev-parse", "v2"), "v2"), ("v1", "v1")):
            reloaded = client.post("/model/reload", headers=auth, json={"rev": rev})
            assert reloaded.status_code == 200, reloaded.text
            assert reloaded.json()["sha256"] == shas[f"{tag}{suffix}"] and reloaded.json()["source"] == f"rev:{rev}"
        back = client.post("/model/reload", headers=auth, json={"rev": ""})  # empty: the configured one
        assert back.status_code == 200 and back.json()["sha256"] == shas[f"v2{suffix}"], back.text
        assert client.post("/model/reload", headers=auth, json={"rev": "v1"}).status_code == 200
        failed = client.post("/model/reload", headers=auth, json={"rev": "no-such-tag"})
        assert failed.status_code == 409
        detail = failed.json()["detail"]
        assert detail.startswith("reload failed: rev 'no-such-tag' is not a git revision"), detail
        assert "MODEL_REV" not in detail and f"still serving {shas[f'v1{suffix}'][:12]}" in detail
