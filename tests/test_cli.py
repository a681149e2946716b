"""The `greenr` command line: options reach the subcommand, expected failures exit 2 cleanly."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.images import make_images
from tests.helpers.project import REPO, VENV_BIN, project_env, run


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


def test_mlflow_ui_serves_the_embedded_store_on_loopback(tmp_path: Path):
    import os
    import signal
    import subprocess
    import time
    import urllib.request

    from greenr.processes import free_port

    port = free_port()
    env = project_env(REPO, tmp_path / "state")
    proc = subprocess.Popen(
        [str(VENV_BIN / "greenr"), "mlflow-ui", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline, body = time.monotonic() + 120, b""
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
                break
            except OSError:
                time.sleep(0.5)
        assert body.strip() == b"OK"
        assert (tmp_path / "state" / "mlflow" / "mlflow.db").is_file()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the UI's workers are in the same process group
        proc.wait(timeout=30)
