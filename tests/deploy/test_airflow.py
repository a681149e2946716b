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
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import yaml
from PIL import Image

from greenr.ops.inbox import Inbox, S3ItemStore
from greenr.ops.objectstore import Remote
from greenr.processes import free_ports
from tests.helpers.images import jpeg_bytes, scene
from tests.helpers.processes import background_server, tool
from tests.helpers.project import DEPLOY, REPO, TINY_PARAMS, init_project, point_remote_at, project_env, run
from tests.helpers.s3 import ACCESS_KEY, SECRET_KEY, running_s3

DAGS = DEPLOY / "airflow" / "dags"
MONITORING = DEPLOY / "monitoring"
AIRFLOW_VENV = Path(os.environ.get("AIRFLOW_VENV", REPO / ".state" / "airflow-venv"))

INSPECT = """
import json
from pathlib import Path
from airflow.dag_processing.dagbag import BundleDagBag
# As Airflow parses the dags-folder bundle: its folder on sys.path, so DAG files import greenr_common.
bag = BundleDagBag(dag_folder=%r, bundle_path=Path(%r))
print("RESULT" + json.dumps({
    "errors": {k: str(v) for k, v in bag.import_errors.items()},
    "dags": {
        dag_id: {
            "schedule": str(dag.schedule),
            "catchup": dag.catchup,
            "params": dict(dag.params),
            "tasks": {t.task_id: {"upstream": sorted(t.upstream_task_ids), "retries": t.retries,
                                  "timeout": t.execution_timeout.total_seconds() if t.execution_timeout else None}
                      for t in dag.tasks},
        }
        for dag_id, dag in bag.dags.items()
    },
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
        [str(airflow_python), "-c", INSPECT % (str(DAGS), str(DAGS))],
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
    assert sorted(dag_summary["dags"]) == ["greenr_feedback", "greenr_pipeline"]


def test_task_graph_is_as_intended(dag_summary) -> None:
    tasks = dag_summary["dags"]["greenr_pipeline"]["tasks"]
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
    dag = dag_summary["dags"]["greenr_pipeline"]
    assert dag["schedule"] == "0 3 * * 1"
    assert dag["catchup"] is False
    assert set(dag["params"]) == {"overrides", "reload_rev"}


def test_feedback_dag_graph_schedule_and_params(dag_summary) -> None:
    dag = dag_summary["dags"]["greenr_feedback"]
    assert {name: t["upstream"] for name, t in dag["tasks"].items()} == {
        "enough_feedback": [],
        "accept": ["enough_feedback"],
        "reproduce": ["accept"],
        "gate": ["reproduce"],
        "push": ["gate"],
        "commit": ["push"],
        "reload_server": ["commit", "push"],
    }
    for name, t in dag["tasks"].items():
        assert t["timeout"] and t["timeout"] > 0, f"{name} has no execution timeout"
    assert dag["tasks"]["gate"]["retries"] == 0 and dag["tasks"]["commit"]["retries"] == 0
    assert dag["tasks"]["accept"]["retries"] >= 1 and dag["tasks"]["push"]["retries"] >= 1
    assert dag["schedule"] == "@hourly" and dag["catchup"] is False
    assert dag["params"] == {"min_labeled": 50, "force": False, "trust_feedback": False}


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
                # Enough for the frozen default to separate the blobs, so the real gate (against
                # main's committed metrics) promotes: at 32 px Lite0's features are a single pixel.
                "model.image_size=64",
                "train.epochs=10",
                "train.lr=0.01",
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
    assert params["model"]["image_size"] == 64 and params["train"]["epochs"] == 10
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


# ---------------------------------------------------------------------------- the feedback DAG

# The loop's mechanics are under test, not the model's quality: the gate's floors are off.
LOOP_PARAMS = {
    **TINY_PARAMS,
    "promote": {"min_accuracy": 0.0, "min_macro_f1": 0.0, "max_accuracy_drop": 1.0, "max_macro_f1_drop": 1.0},
}


def task_states(home: Path, dag_id: str, run_id: str | None = None) -> dict[str, str]:
    with sqlite3.connect(home / "airflow.db") as db:
        if run_id is None:
            (run_id,) = db.execute(
                "SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (dag_id,)
            ).fetchone()
        rows = db.execute(
            "SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ?", (dag_id, run_id)
        ).fetchall()
    return dict(rows)


@pytest.mark.e2e
def test_feedback_dag_accepts_retrains_commits_on_a_branch_and_reloads(airflow_python, tmp_path, reload_server):
    env = project_env(tmp_path / "repo", tmp_path / "state")
    repo = init_project(tmp_path / "repo", env, per_class=12, params=LOOP_PARAMS)
    airflow = str(airflow_python.parent / "airflow")
    with running_s3(tmp_path / "s3") as s3:
        env |= s3.env
        point_remote_at(repo, env, int(s3.endpoint.rsplit(":", 1)[1]))
        run(["greenr", "run"], repo, env)  # the champion
        run(["git", "add", "-A"], repo, env)
        run(["git", "commit", "-qm", "pipeline outputs"], repo, env)
        main_data = yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]["md5"]
        box = Inbox(S3ItemStore(Remote("minio", "greenr", "dvc", s3.endpoint, "us-east-1", ACCESS_KEY, SECRET_KEY)))
        photos = [jpeg_bytes(scene(label, 90 + i)) for i, label in enumerate(("dandelion", "grass") * 2)]
        for data, label in zip(photos, ("dandelion", "grass") * 2):
            box.add_vote(data, label=label)

        home = tmp_path / "airflow-home"
        af_env = airflow_env(
            home,
            **{k: v for k, v in env.items() if k.startswith(("GREENR_", "AWS_", "MLFLOW_", "DVC_", "GIT_"))},
            GREENR_REPO=str(repo),
            GREENR_PYTHON=sys.executable,
            GREENR_CLI=str(Path(sys.executable).parent / "greenr"),
            GREENR_API_URL=reload_server,
            RELOAD_TOKEN="test-token",
        )
        migrate = subprocess.run([airflow, "db", "migrate"], env=af_env, capture_output=True, text=True, timeout=300)
        assert migrate.returncode == 0, migrate.stderr[-3000:]

        # 4 labeled items, fewer than min_labeled: the hourly check stops the run at once.
        quiet = subprocess.run(
            [airflow, "dags", "test", "greenr_feedback"], env=af_env, capture_output=True, text=True, timeout=600
        )
        assert quiet.returncode == 0, (quiet.stdout + quiet.stderr)[-6000:]
        states = task_states(home, "greenr_feedback")
        assert states["enough_feedback"] == "success" and states["accept"] == "skipped", states
        assert box.status()["pending"] == 4

        # The drift alert's conf: the loop runs whatever the count; the single votes are taken only
        # with the DAG's trust_feedback setting.
        loop = subprocess.run(
            [airflow, "dags", "test", "greenr_feedback", "-c", json.dumps({"reason": "drift", "trust_feedback": True})],
            env=af_env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        output = loop.stdout + loop.stderr
        assert loop.returncode == 0, output[-6000:]
        assert set(task_states(home, "greenr_feedback").values()) == {"success"}, output[-6000:]
        assert box.status()["pending"] == 0 and box.status()["accepted"] == 4
        assert "in sync" in run(["dvc", "status", "--cloud"], repo, env).stdout
    branch = run(["git", "branch", "--show-current"], repo, env).stdout.strip()
    assert branch.startswith("retrain/")
    message = run(["git", "log", "-1", "--format=%s"], repo, env).stdout
    assert "Retrain from the feedback inbox" in message and "promoted" in message
    changed = run(["git", "diff", "--name-only", "main", "HEAD"], repo, env).stdout.split()
    assert {"data.dvc", "dvc.lock", "metrics/evaluate.json", "splits/train.csv"} <= set(changed), changed
    assert yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]["md5"] != main_data
    assert run(["git", "status", "--porcelain", "--untracked-files=no"], repo, env).stdout == ""
    assert ReloadRecorder.calls == [{"path": "/model/reload", "auth": "Bearer test-token", "body": ""}]


# ---------------------------------------------------------------------------- the drift alert triggers it


def http_json(method: str, url: str, body: object = None, token: str | None = None) -> tuple[int, object]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        url, method=method, data=None if body is None else json.dumps(body).encode(), headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


@pytest.mark.e2e
def test_drift_alert_goes_through_alertmanager_and_the_relay_to_a_queued_feedback_run(airflow_python, tmp_path):
    """A real Alertmanager with deploy/monitoring/alertmanager.yml, the relay, and Airflow's real API server."""
    home = tmp_path / "airflow-home"
    home.mkdir()
    (home / "passwords.json").write_text(json.dumps({"relay": "relay-password"}))
    env = airflow_env(
        home,
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="relay:admin",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(home / "passwords.json"),
        AIRFLOW__API__WORKERS="1",
    )
    airflow = str(airflow_python.parent / "airflow")
    for step in (["db", "migrate"], ["dags", "reserialize"]):
        done = subprocess.run([airflow, *step], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    api_port, relay_port, am_port = free_ports(3)
    api = f"http://127.0.0.1:{api_port}"
    relay = f"http://127.0.0.1:{relay_port}"
    alertmanager = f"http://127.0.0.1:{am_port}"
    (tmp_path / "relay-token").write_text("relay-secret")
    config = yaml.safe_load((MONITORING / "alertmanager.yml").read_text())
    config["route"]["routes"][0]["group_wait"] = "1s"  # the committed minute, shortened for the test
    (hook,) = next(r for r in config["receivers"] if r["name"] == "retrain-on-drift")["webhook_configs"]
    hook["url"] = f"{relay}/alertmanager"
    hook["http_config"]["authorization"]["credentials_file"] = str(tmp_path / "relay-token")
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(config))
    relay_env = os.environ | {
        "AIRFLOW_URL": api,
        "AIRFLOW_USERNAME": "relay",
        "AIRFLOW_PASSWORD": "relay-password",
        "RELAY_TOKEN": "relay-secret",
        "PORT": str(relay_port),
    }

    def answers(url: str) -> bool:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200

    with (
        background_server(
            [airflow, "api-server", "-H", "127.0.0.1", "-p", str(api_port)],
            tmp_path / "api-server.log",
            lambda: answers(f"{api}/api/v2/version"),
            timeout=240,
            env=env,
        ),
        background_server(
            [sys.executable, str(MONITORING / "alert_relay.py")],
            tmp_path / "relay.log",
            lambda: answers(f"{relay}/health"),
            env=relay_env,
        ),
        background_server(
            [
                tool("prometheus-alertmanager"),
                f"--config.file={tmp_path / 'alertmanager.yml'}",
                f"--storage.path={tmp_path / 'alertmanager-data'}",
                f"--web.listen-address=127.0.0.1:{am_port}",
                "--cluster.listen-address=",
            ],
            tmp_path / "alertmanager.log",
            lambda: answers(f"{alertmanager}/-/ready"),
        ),
    ):
        # The relay wants Alertmanager's token.
        assert http_json("POST", f"{relay}/alertmanager", {"alerts": []})[0] == 401
        alerts = [
            {"labels": {"alertname": "GreenrInputDrift", "feature": "brightness", "job": "greenr-api"}},
            {"labels": {"alertname": "GreenrApiDown", "job": "greenr-api"}},
        ]
        assert http_json("POST", f"{alertmanager}/api/v2/alerts", alerts)[0] == 200
        status, token = http_json("POST", f"{api}/auth/token", {"username": "relay", "password": "relay-password"})
        assert status == 201, token
        access = token["access_token"]  # type: ignore[index]
        deadline = time.monotonic() + 90
        runs: list = []
        while time.monotonic() < deadline and not runs:
            status, body = http_json("GET", f"{api}/api/v2/dags/greenr_feedback/dagRuns", token=access)
            assert status == 200, body
            runs = body["dag_runs"]  # type: ignore[index]
            time.sleep(1)
        assert len(runs) == 1, (tmp_path / "relay.log").read_text()[-3000:]
        assert runs[0]["conf"]["reason"] == "drift" and runs[0]["triggered_by"] == "rest_api"
        assert [a["labels"]["feature"] for a in runs[0]["conf"]["alerts"]] == ["brightness"]
        assert "GreenrInputDrift" in runs[0]["note"]
        status, others = http_json("GET", f"{api}/api/v2/dags/greenr_pipeline/dagRuns", token=access)
        assert others["dag_runs"] == []  # type: ignore[index]
