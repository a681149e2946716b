"""The `greenr` command line: options reach the subcommand, expected failures exit 2 cleanly, and
long-running commands stop with everything they started when their PID gets SIGTERM."""

from __future__ import annotations

import shutil
import signal
import socket
from pathlib import Path

import pytest

from greenr.processes import free_port
from tests.helpers.images import make_images
from tests.helpers.processes import assert_stops_cleanly, spawn, wait_for_tree, wait_for_url
from tests.helpers.project import REPO, TINY_PARAMS, VENV_BIN, init_project, point_remote_at, project_env, run


def test_ingest_options_reach_the_ingest_command(tmp_path: Path):
    source = tmp_path / "source"
    for label in ("dandelion", "grass"):
        make_images(source / label, label, 3, 32)
    dest = tmp_path / "data"
    env = project_env(REPO, tmp_path / "state")
    result = run(
        [str(VENV_BIN / "greenr"), "ingest", "--source", str(source), "--dest", str(dest), "--no-dvc-add"], REPO, env
    )
    assert sorted(p.name for p in (dest / "grass").iterdir()) == ["00000000.jpg", "00000001.jpg", "00000002.jpg"]
    assert "6 ok" in result.stdout + result.stderr


def test_params_check_reports_a_typo_without_traceback(tmp_path: Path):
    project = tmp_path / "p"
    project.mkdir()
    (project / "dvc.yaml").write_text("stages: {}\n")
    (project / "params.yaml").write_text("train:\n  epocs: 3\n")
    result = run(
        [str(VENV_BIN / "greenr"), "params", "check"], project, project_env(project, tmp_path / "state"), check=False
    )
    assert result.returncode == 2
    assert "train.epocs: unknown key (did you mean 'epochs'?)" in result.stderr
    assert "Traceback" not in result.stderr


def test_mlflow_ui_serves_the_embedded_store_and_stops_whole_on_sigterm(tmp_path: Path):
    """`mlflow ui` starts uvicorn workers, a job runner and task consumers: SIGTERM to greenr's
    PID alone must stop all of them (as a service manager or `kill PID` would send it)."""
    port = free_port()
    env = project_env(REPO, tmp_path / "state")
    with spawn([str(VENV_BIN / "greenr"), "mlflow-ui", "--port", str(port)], REPO, tmp_path, env) as proc:
        # Minutes on a loaded machine: MLflow's first start creates its database.
        wait_for_url(proc, f"http://127.0.0.1:{port}/health", timeout=400, log=tmp_path / "out.log")
        assert (tmp_path / "state" / "mlflow" / "mlflow.db").is_file()
        wait_for_tree(proc.pid, lambda tree: len(tree) > 2, timeout=60)  # the server's own children
        assert assert_stops_cleanly(proc, [port]) == 128 + signal.SIGTERM


def test_serve_stops_on_sigterm_with_the_dvc_pull_it_started(tmp_path: Path):
    """The model is missing, so the server runs `dvc pull` in a worker thread against a store that
    never answers; SIGTERM must stop the server and that dvc process too, promptly."""
    root = tmp_path / "project"
    env = project_env(root, tmp_path / "state")
    blackhole = socket.socket()  # accepts connections (in the backlog) and never answers
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(16)
    try:
        _dvc_project_with_missing_model(root, env, blackhole.getsockname()[1])
        port = free_port()
        serve_env = {
            **env,
            **FAKE_KEYS,
            "GREENR_ROOT": str(root),
            "PORT": str(port),
            "MODEL_PULL": "true",
            "LOG_LEVEL": "warning",
        }
        with spawn([str(VENV_BIN / "greenr"), "serve"], root, tmp_path, serve_env) as proc:
            wait_for_tree(proc.pid, lambda tree: any("pull" in line for line in tree.values()), timeout=300)
            wait_for_url(proc, f"http://127.0.0.1:{port}/health", timeout=60, log=tmp_path / "out.log")
            assert_stops_cleanly(proc, [port], exit_within=60)  # uvicorn exits 0 after a graceful stop
    finally:
        blackhole.close()


def test_make_serve_stops_on_sigterm_to_make(tmp_path: Path, ckpt_file: Path):
    """What `make` starts stops with it: make passes SIGTERM on to `greenr serve`."""
    port = free_port()
    env = {
        **project_env(REPO, tmp_path / "state"),
        "PORT": str(port),
        "MODEL_PATH": str(ckpt_file),
        "MODEL_PULL": "false",
        "LOG_LEVEL": "warning",
    }
    # -o setup: the venv is there already (`make setup` would only check it, slowly).
    with spawn(["make", "-s", "-o", "setup", "serve"], REPO, tmp_path, env) as proc:
        wait_for_url(proc, f"http://127.0.0.1:{port}/ready", timeout=300, log=tmp_path / "out.log")
        code = assert_stops_cleanly(proc, [port])
    assert code != 0  # make reports the interrupted recipe


FAKE_KEYS = {"AWS_ACCESS_KEY_ID": "greenr-test", "AWS_SECRET_ACCESS_KEY": "greenr-test-secret"}


@pytest.fixture
def ckpt_file(tmp_path: Path) -> Path:
    from tests.helpers.serving import write_checkpoint

    path = tmp_path / "stage-1.pth"
    write_checkpoint(path)
    return path


def _dvc_project_with_missing_model(root: Path, env: dict[str, str], port: int) -> None:
    """git + DVC project whose tracked checkpoint is neither in the workspace nor in the cache."""
    from tests.helpers.serving import write_checkpoint

    root.mkdir()
    (root / "dvc.yaml").write_text("stages: {}\n")
    (root / "params.yaml").write_text("{}\n")
    run(["git", "init", "-q", "-b", "main"], root, env)
    run(["dvc", "init", "-q"], root, env)
    run(["dvc", "config", "core.analytics", "false"], root, env)
    run(["dvc", "remote", "add", "-d", "minio", "s3://greenr/dvc"], root, env)
    run(["dvc", "remote", "modify", "minio", "endpointurl", f"http://127.0.0.1:{port}"], root, env)
    write_checkpoint(root / "models" / "stage-1.pth")
    run(["dvc", "add", "-q", "models/stage-1.pth"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "model"], root, env)
    (root / "models" / "stage-1.pth").unlink()
    shutil.rmtree(root / ".dvc" / "cache")


@pytest.mark.e2e
def test_run_stops_dvc_its_stage_and_the_store_it_started_on_sigterm(tmp_path: Path):
    """SIGTERM to `greenr run` while the train stage runs: dvc, the stage script and the local
    object store that the run started all stop, and the run exits 128 + 15."""
    project = tmp_path / "project"
    env = project_env(project, tmp_path / "state")
    init_project(project, env, params={**TINY_PARAMS, "train": {**TINY_PARAMS["train"], "epochs": 500}})
    store_port = free_port()
    point_remote_at(project, env, store_port)
    with spawn([str(VENV_BIN / "greenr"), "run"], project, tmp_path, env) as proc:
        wait_for_tree(
            proc.pid,
            lambda tree: (
                any("stages.train" in line for line in tree.values()) and any("weed" in line for line in tree.values())
            ),
            timeout=600,
        )
        assert assert_stops_cleanly(proc, [store_port]) == 128 + signal.SIGTERM
    assert not (tmp_path / "state" / "objectstore" / "weed.pid").exists()
    assert "stopped (SIGTERM)" in (tmp_path / "out.log").read_text()
