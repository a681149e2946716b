"""Airflow 3 DAG: retrain greenr weekly (or on demand) through the project's own commands.

    validate_overrides -> ensure_data -> reproduce -> gate -> push -> reload_server

Every task runs a command of the project in its checkout (the Airflow venv is separate: Airflow
caps fastapi). Where things are comes from the environment of the Airflow workers (greenr_common.py:
GREENR_REPO, GREENR_PYTHON, GREENR_CLI, GREENR_API_URL, RELOAD_TOKEN), and DATA_SOURCE is what
`greenr ingest` reads when there is nothing to pull.

Manual runs take params (Trigger DAG w/ config, or `airflow dags trigger -c '{...}'`):
    overrides     ["train.epochs=5", "train.lr=0.0003"]  -> `dvc exp run -S ...`
    reload_rev    revision the server should load (default: the one it is configured with)
Every run is a DVC experiment named after the Airflow run, so `dvc exp show` lists them.
"""

from __future__ import annotations

import logging
import re
from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, task
from airflow.sdk.exceptions import AirflowFailException
from greenr_common import CLI, DEFAULT_ARGS, PYTHON, ref_name, reload_server, run

log = logging.getLogger(__name__)

SECTIONS = ("split", "model", "train", "evaluate")
OVERRIDE = re.compile(rf"^(?:{'|'.join(SECTIONS)})(?:\.[A-Za-z_][A-Za-z0-9_]*)+=[^\s=][^\n]*$")


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
        "overrides": Param(
            [],
            type="array",
            items={"type": "string"},
            description="params.yaml overrides, e.g. train.epochs=5 (dvc exp run -S)",
        ),
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
                f"overrides {bad} are not `section.key=value` with section in {', '.join(SECTIONS)}"
            )
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
        name = ref_name("airflow-", run_id or "manual")
        args = [PYTHON, "-m", "dvc", "exp", "run", "--name", name]
        for override in overrides:
            args += ["--set-param", override]
        run(args)
        return name

    @task(retries=0, execution_timeout=timedelta(minutes=10))
    def gate(experiment: str) -> dict:
        """The promotion gate, `greenr promote`: floors and regressions against main (params.yaml
        `promote:`). Failing here stops the run before anything is pushed or reloaded."""
        run([CLI, "promote", "--base", "main"])
        return {"experiment": experiment, "gate": "greenr promote"}

    @task(retries=3, execution_timeout=timedelta(minutes=30))
    def push(gate_result: dict) -> None:
        """`greenr push`: data and model to the DVC remote (MinIO)."""
        run([CLI, "push"])

    @task(task_id="reload_server", retries=3, retry_delay=timedelta(seconds=30), execution_timeout=timedelta(minutes=5))
    def reload(params: dict | None = None) -> dict:
        """POST /model/reload so the server swaps to the new model without dropping requests."""
        return reload_server((params or {}).get("reload_rev") or "")

    overrides = validate_overrides()
    data = ensure_data()
    experiment = reproduce(overrides)
    data >> experiment
    pushed = push(gate(experiment))
    pushed >> reload()


greenr_pipeline()
