"""Airflow 3 DAG: retrain greenr weekly (or on demand) through the project's own commands.

    validate_overrides -> ensure_data -> reproduce -> gate -> push -> reload_server

Every task runs a command of the project in its checkout (the Airflow venv is separate: Airflow
caps fastapi). Where things are comes from the environment of the Airflow workers:

    GREENR_REPO         the checkout to run in (default: the one this file lives in). Give Airflow a
                        checkout of its own: runs with overrides change params.yaml there.
    GREENR_PYTHON       the project's Python            (default: $GREENR_REPO/.venv/bin/python)
    GREENR_CLI          the project's CLI                (default: $GREENR_REPO/.venv/bin/greenr)
    UV_PROJECT_ENVIRONMENT  the project's venv folder, when not .venv (e.g. .venv-3.12)
    GREENR_API_URL      the server to reload; empty skips the reload (default: http://127.0.0.1:8000)
    RELOAD_TOKEN        bearer token of POST /model/reload
    DATA_SOURCE         what `greenr ingest` reads when there is nothing to pull

Manual runs take params (Trigger DAG w/ config, or `airflow dags trigger -c '{...}'`):
    overrides     ["train.epochs=5", "train.lr=0.0003"]  -> `dvc exp run -S ...`
    metric_floor  test accuracy below which nothing is pushed (used when greenr.promote is absent)
    reload_rev    revision the server should load (default: the one it is configured with)
Every run is a DVC experiment named after the Airflow run, so `dvc exp show` lists them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.sdk import Param, dag, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

log = logging.getLogger(__name__)

REPO = Path(os.environ.get("GREENR_REPO") or Path(__file__).resolve().parents[3])
VENV_BIN = REPO / (os.environ.get("UV_PROJECT_ENVIRONMENT") or ".venv") / "bin"
PYTHON = os.environ.get("GREENR_PYTHON") or str(VENV_BIN / "python")
CLI = os.environ.get("GREENR_CLI") or str(VENV_BIN / "greenr")
API_URL = os.environ.get("GREENR_API_URL", "http://127.0.0.1:8000")
SECTIONS = ("split", "model", "train", "evaluate")
OVERRIDE = re.compile(rf"^(?:{'|'.join(SECTIONS)})(?:\.[A-Za-z_][A-Za-z0-9_]*)+=[^\s=][^\n]*$")

DEFAULT_ARGS = {
    "owner": "greenr",
    "retries": 2,
    "retry_delay": timedelta(minutes=2),
    "retry_exponential_backoff": True,
    "execution_timeout": timedelta(minutes=30),
}


def run(args: list[str], timeout: float | None = None) -> str:
    """Run a project command in the checkout, log its output, fail the task on a non-zero exit."""
    env = os.environ.copy()
    # dvc (and `dvc exp` workers) must come from the project's venv.
    env["PATH"] = f"{Path(PYTHON).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("DVC_NO_ANALYTICS", "1")
    log.info("$ %s   (in %s)", " ".join(args), REPO)
    result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
                            check=False)
    for line in (result.stdout + result.stderr).splitlines():
        log.info("%s", line)
    if result.returncode != 0:
        raise RuntimeError(f"`{' '.join(args)}` exited with {result.returncode}")
    return result.stdout


def experiment_name(run_id: str) -> str:
    """A git-ref-safe DVC experiment name for this Airflow run."""
    return "airflow-" + re.sub(r"[^A-Za-z0-9_-]+", "-", run_id).strip("-")[:60]


@dag(
    dag_id="greenr_pipeline",
    description="Pull or ingest the images, dvc repro, gate on test metrics, push to MinIO, reload the API",
    schedule="0 3 * * 1",  # Mondays 03:00 UTC
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["greenr", "training"],
    params={
        "overrides": Param([], type="array", items={"type": "string"},
                           description="params.yaml overrides, e.g. train.epochs=5 (dvc exp run -S)"),
        "metric_floor": Param(0.85, type="number", minimum=0, maximum=1,
                              description="minimum test accuracy when greenr.promote is absent"),
        "reload_rev": Param("", type="string", description="revision the server loads; empty = its default"),
    },
)
def greenr_pipeline() -> None:
    @task(retries=0, execution_timeout=timedelta(minutes=1))
    def validate_overrides(params: dict | None = None) -> list[str]:
        """Reject malformed overrides before any heavy work (the stages validate the values)."""
        overrides = list((params or {}).get("overrides") or [])
        bad = [o for o in overrides if not OVERRIDE.match(o)]
        if bad:
            raise AirflowFailException(
                f"overrides {bad} are not `section.key=value` with section in {', '.join(SECTIONS)}")
        return overrides

    @task(retries=3, execution_timeout=timedelta(minutes=30))
    def ensure_data() -> None:
        """`greenr pull`; when the remote has nothing, `greenr ingest` (from DATA_SOURCE if set)."""
        try:
            run([CLI, "pull"])
        except RuntimeError:
            # `greenr ingest` reads DATA_SOURCE from the environment (else the public URL template).
            log.warning("pull failed: ingesting instead")
            run([CLI, "ingest"])

    @task(retries=1, execution_timeout=timedelta(hours=6))
    def reproduce(overrides: list[str], run_id: str | None = None) -> str:
        """`dvc exp run` in the workspace: the pipeline with the overrides, saved as an experiment."""
        name = experiment_name(run_id or "manual")
        args = [PYTHON, "-m", "dvc", "exp", "run", "--name", name]
        for override in overrides:
            args += ["--set-param", override]
        run(args)
        return name

    @task(retries=0, execution_timeout=timedelta(minutes=10))
    def gate(experiment: str, params: dict | None = None) -> dict:
        """The promotion gate `python -m greenr.promote` if the project has one, else a floor on
        test accuracy. Failing here stops the run before anything is pushed or reloaded."""
        has_promote = subprocess.run([PYTHON, "-c", "import greenr.promote"], cwd=REPO,
                                     capture_output=True, check=False).returncode == 0
        if has_promote:
            run([PYTHON, "-m", "greenr.promote"])
            return {"experiment": experiment, "gate": "greenr.promote"}
        metrics = json.loads((REPO / "metrics" / "evaluate.json").read_text(encoding="utf-8"))
        floor = float((params or {}).get("metric_floor", 0.85))
        accuracy = float(metrics["accuracy"])
        if accuracy < floor:
            raise AirflowFailException(f"test accuracy {accuracy:.3f} is below the floor {floor:.3f}: "
                                       f"not pushing experiment {experiment}")
        log.info("test accuracy %.3f >= floor %.3f", accuracy, floor)
        return {"experiment": experiment, "gate": "metric_floor", "accuracy": accuracy}

    @task(retries=3, execution_timeout=timedelta(minutes=30))
    def push(gate_result: dict) -> None:
        """`greenr push`: data and model to the DVC remote (MinIO)."""
        run([CLI, "push"])

    @task(retries=3, retry_delay=timedelta(seconds=30), execution_timeout=timedelta(minutes=5))
    def reload_server(params: dict | None = None) -> dict:
        """POST /model/reload so the server swaps to the new model without dropping requests."""
        if not API_URL:
            raise AirflowSkipException("GREENR_API_URL is empty: no server to reload")
        token = os.environ.get("RELOAD_TOKEN", "")
        if not token:
            raise AirflowFailException("RELOAD_TOKEN is not set in the Airflow environment")
        rev = (params or {}).get("reload_rev") or ""
        request = urllib.request.Request(
            f"{API_URL.rstrip('/')}/model/reload", method="POST",
            data=json.dumps({"rev": rev}).encode() if rev else None,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                answer = json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")[:500]
            if err.code in (401, 403):  # a wrong token will not get better by retrying
                raise AirflowFailException(f"reload refused ({err.code}): {detail}") from None
            raise RuntimeError(f"reload failed ({err.code}): {detail}") from None
        log.info("server reloaded: %s", answer)
        return answer

    overrides = validate_overrides()
    data = ensure_data()
    experiment = reproduce(overrides)
    data >> experiment
    pushed = push(gate(experiment))
    pushed >> reload_server()


greenr_pipeline()
