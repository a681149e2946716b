"""The Airflow DAG: imports cleanly, has the intended graph, and runs end to end (`airflow dags test`)
against a real local S3 server, in Airflow's own venv (created by deploy/airflow/setup.sh)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.helpers.project import DEPLOY, REPO
from tests.helpers.s3 import running_s3

DAGS = DEPLOY / "airflow" / "dags"
AIRFLOW_VENV = Path(os.environ.get("AIRFLOW_VENV", REPO / ".state" / "airflow-venv"))

INSPECT = """
import json
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=%r)
dag = bag.dags.get("greenr_pipeline")
print("RESULT" + json.dumps({
    "errors": {k: str(v) for k, v in bag.import_errors.items()},
    "dags": sorted(bag.dags),
    "schedule": str(dag.schedule) if dag else None,
    "catchup": dag.catchup if dag else None,
    "params": dict(dag.params) if dag else None,
    "tasks": {t.task_id: {"upstream": sorted(t.upstream_task_ids), "retries": t.retries,
                          "timeout": t.execution_timeout.total_seconds() if t.execution_timeout else None}
              for t in dag.tasks} if dag else {},
}))
"""


@pytest.fixture(scope="module")
def airflow_python() -> Path:
    """The Airflow venv, made (idempotently) by the project's own script."""
    result = subprocess.run(
        [str(DEPLOY / "airflow" / "setup.sh")],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env=os.environ | {"AIRFLOW_VENV": str(AIRFLOW_VENV)},
    )
    assert result.returncode == 0, f"deploy/airflow/setup.sh failed:\n{result.stdout}\n{result.stderr}"
    return AIRFLOW_VENV / "bin" / "python"


def airflow_env(home: Path, **extra: str) -> dict[str, str]:
    return os.environ | {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        **extra,
    }


@pytest.fixture(scope="module")
def dag_summary(airflow_python, tmp_path_factory) -> dict:
    home = tmp_path_factory.mktemp("airflow-home")
    result = subprocess.run(
        [str(airflow_python), "-c", INSPECT % str(DAGS)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=airflow_env(home),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT"))
    return json.loads(line[len("RESULT") :])


def test_dag_folder_imports_without_errors(dag_summary) -> None:
    assert dag_summary["errors"] == {}
    assert dag_summary["dags"] == ["greenr_pipeline"]


def test_task_graph_is_as_intended(dag_summary) -> None:
    tasks = dag_summary["tasks"]
    assert {name: t["upstream"] for name, t in tasks.items()} == {
        "validate_overrides": [],
        "ensure_data": [],
        "reproduce": ["ensure_data", "validate_overrides"],
        "gate": ["reproduce"],
        "push": ["gate"],
        "reload_server": ["push"],
    }
    for name, t in tasks.items():
        assert t["timeout"] and t["timeout"] > 0, f"{name} has no execution timeout"
    assert tasks["ensure_data"]["retries"] >= 1 and tasks["push"]["retries"] >= 1
    assert tasks["gate"]["retries"] == 0, "a failed gate must not be retried into passing"


def test_schedule_and_params(dag_summary) -> None:
    assert dag_summary["schedule"] == "0 3 * * 1"
    assert dag_summary["catchup"] is False
    assert set(dag_summary["params"]) == {"overrides", "reload_rev"}


class ReloadRecorder(BaseHTTPRequestHandler):
    calls: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        ReloadRecorder.calls.append(
            {"path": self.path, "auth": self.headers.get("Authorization"), "body": self.rfile.read(length).decode()}
        )
        payload = json.dumps({"sha256": "reloaded"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def reload_server() -> Iterator[str]:
    ReloadRecorder.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), ReloadRecorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def copy_checkout(target: Path) -> None:
    """This working tree (tracked and new files, not ignored ones) as a fresh git repository."""
    files = (
        subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target / rel)
    git = ["git", "-C", str(target)]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "config", "user.email", "airflow@example.invalid"], check=True)
    subprocess.run([*git, "config", "user.name", "airflow test"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "checkout for the airflow test"], check=True)


def make_images(folder: Path) -> None:
    rng = np.random.default_rng(0)
    for label, colour in (("dandelion", (230, 200, 40)), ("grass", (60, 140, 50))):
        (folder / label).mkdir(parents=True)
        for i in range(8):
            pixels = np.clip(np.array(colour) + rng.normal(0, 25, (48, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, "RGB").save(folder / label / f"{label}-{i}.jpg", quality=90)


@pytest.mark.e2e
def test_dags_test_end_to_end(airflow_python, tmp_path, reload_server) -> None:
    repo = tmp_path / "repo"
    copy_checkout(repo)
    make_images(tmp_path / "source")
    cli = Path(sys.executable).parent / "greenr"  # the project's own CLI (pull, ingest, push)

    with running_s3(tmp_path / "s3") as s3:
        subprocess.run(
            [sys.executable, "-m", "dvc", "remote", "modify", "--local", "minio", "endpointurl", s3.endpoint],
            cwd=repo,
            check=True,
        )
        home = tmp_path / "airflow-home"
        env = airflow_env(
            home,
            GREENR_REPO=str(repo),
            GREENR_PYTHON=sys.executable,
            GREENR_CLI=str(cli),
            GREENR_API_URL=reload_server,
            RELOAD_TOKEN="test-token",
            DATA_SOURCE=str(tmp_path / "source"),
            GREENR_STATE_DIR=str(tmp_path / "state"),
            GREENR_OFFLINE="1",
            MLFLOW_DISABLE_TELEMETRY="true",
            DVC_NO_ANALYTICS="1",
            **s3.env,
        )
        airflow = str(airflow_python.parent / "airflow")
        migrate = subprocess.run(
            [airflow, "db", "migrate"], env=env, capture_output=True, text=True, timeout=300, check=False
        )
        assert migrate.returncode == 0, migrate.stderr[-3000:]
        conf = {
            "overrides": [
                "model.image_size=32",
                "train.epochs=1",
                "train.batch_size=8",
                "evaluate.bootstrap_samples=10",
            ],
        }
        run = subprocess.run(
            [airflow, "dags", "test", "greenr_pipeline", "-c", json.dumps(conf)],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        output = run.stdout + run.stderr
        assert run.returncode == 0, output[-6000:]

        with sqlite3.connect(home / "airflow.db") as db:
            by_task = dict(
                db.execute("SELECT task_id, state FROM task_instance WHERE dag_id = ?", ("greenr_pipeline",)).fetchall()
            )
        assert by_task == dict.fromkeys(
            ("validate_overrides", "ensure_data", "reproduce", "gate", "push", "reload_server"), "success"
        ), output[-6000:]

        # data and model reached the S3 server
        keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket="greenr").get("Contents", [])]
        lock = yaml.safe_load((repo / "dvc.lock").read_text())
        model_md5 = next(o["md5"] for o in lock["stages"]["train"]["outs"] if o["path"] == "models/stage-1.pth")
        assert any(key.endswith(model_md5[2:]) for key in keys), keys[:20]
        assert len(keys) > 16  # 16 images, the data listing and the model
    # the overrides were applied, and the run is a DVC experiment
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["model"]["image_size"] == 32 and params["train"]["epochs"] == 1
    assert (repo / "metrics" / "drift_reference.json").is_file()
    exps = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "list", "--name-only"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "airflow-" in exps
    # the server was told to reload, with the token
    assert ReloadRecorder.calls == [{"path": "/model/reload", "auth": "Bearer test-token", "body": ""}]
