"""Airflow 3 DAG: retrain from the feedback inbox, when enough labeled items wait or when inputs drift.

    enough_feedback -> accept -> reproduce -> gate -> push -> commit -> reload_server

Hourly it checks the inbox (`greenr inbox status --json`) and stops there unless at least
`min_labeled` items wait that `greenr inbox accept` would take: by default only items a reviewer
labelled or that FEEDBACK_MIN_AGREEING clients agree on; param `trust_feedback` (for feedback from
trusted clients only) takes single votes too, in the check and in the accept step. A run
triggered with conf `{"reason": "drift"}` (the GreenrInputDrift alert, through
deploy/monitoring/alert_relay.py and Airflow's REST API) or with param `force` goes ahead
regardless. Then, in the checkout (greenr_common.py says which):

    greenr pull data.dvc     the current data version
    greenr inbox accept      trusted items -> data/<class>/, dvc add data, dvc push; items -> accepted/
    dvc repro                the split keeps old images in place, places the new ones, retrains, evaluates
    greenr promote --base main   the gate against the champion: decides only whether the server reloads
    greenr push              data and model to the DVC remote (also when rejected: the branch must pull)
    git commit               data.dvc, dvc.lock, splits, metrics, plots on branch retrain/<run id>
    POST /model/reload       only when the gate promoted the new model

The branch is left for a pull request (`greenr report --base main` writes its report); the checkout
stays on it, so the next run builds on the data accepted so far.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import Param, dag, task
from airflow.sdk.exceptions import AirflowSkipException
from greenr_common import CLI, DEFAULT_ARGS, PYTHON, ref_name, reload_server, run

log = logging.getLogger(__name__)

BASE = "main"
COMMITTED = ["data.dvc", "dvc.lock", "splits", "metrics", "plots"]


def should_run(acceptable: int, min_labeled: int, force: bool, conf: dict[str, Any]) -> str | None:
    """Why this run retrains, or None when it should stop here."""
    if conf.get("reason") == "drift":
        return "input drift alert"
    if force:
        return "forced"
    if acceptable >= min_labeled:
        return f"{acceptable} acceptable items wait (min_labeled {min_labeled})"
    return None


def trust_flags(params: dict[str, Any]) -> list[str]:
    """The inbox commands' trust option for the run's `trust_feedback` param."""
    return ["--trust-feedback"] if params.get("trust_feedback") else []


@dag(
    dag_id="greenr_feedback",
    description="Accept labeled feedback into the data, retrain, gate, push, commit on a branch, reload the API",
    schedule="@hourly",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["greenr", "training", "feedback"],
    params={
        "min_labeled": Param(
            50, type="integer", minimum=1, description="retrain when this many items wait that accept would take"
        ),
        "force": Param(False, type="boolean", description="retrain even with fewer labeled items"),
        "trust_feedback": Param(
            False,
            type="boolean",
            description="accept single votes without a reviewer (`greenr inbox accept --trust-feedback`): "
            "only where every feedback client is trusted",
        ),
    },
)
def greenr_feedback() -> None:
    @task.short_circuit(retries=2, execution_timeout=timedelta(minutes=5))
    def enough_feedback(params: dict | None = None, dag_run: Any = None) -> bool:
        """Go on when enough acceptable items wait, or when the drift alert (or `force`) triggered the run."""
        params = params or {}
        conf = (getattr(dag_run, "conf", None) or {}) if dag_run is not None else {}
        status = json.loads(run([CLI, "inbox", "status", "--json", *trust_flags(params)]).stdout)
        ready = int(status["acceptable"])
        why = should_run(ready, int(params.get("min_labeled", 50)), bool(params.get("force")), conf)
        log.info("inbox: %s acceptable item(s); %s", ready, why or "not enough to retrain: stopping here")
        return why is not None

    @task(retries=2, execution_timeout=timedelta(minutes=60))
    def accept(params: dict | None = None) -> str:
        """`greenr pull data.dvc` (the current data version), then `greenr inbox accept`: items move to
        accepted/ only after `dvc push` stored their data version; a retry completes a failed try."""
        run([CLI, "pull", "data.dvc"])
        return run([CLI, "inbox", "accept", *trust_flags(params or {})]).stdout

    @task(retries=1, execution_timeout=timedelta(hours=6))
    def reproduce(accepted: str) -> None:
        """`dvc repro`: split (old images stay put), train, evaluate, drift reference."""
        run([PYTHON, "-m", "dvc", "repro"])

    @task(retries=0, execution_timeout=timedelta(minutes=10))
    def gate() -> bool:
        """`greenr promote --base main`: exit 0 promote, 1 rejected (not a failure: the data is still
        committed), anything else fails the task."""
        result = run([CLI, "promote", "--base", BASE], check=False)
        if result.returncode not in (0, 1):
            raise RuntimeError(f"the promotion gate could not decide (exit {result.returncode})")
        return result.returncode == 0

    @task(retries=3, execution_timeout=timedelta(minutes=30))
    def push(promoted: bool) -> bool:
        """`greenr push`: data and model to the DVC remote."""
        run([CLI, "push"])
        return promoted

    @task(retries=0, execution_timeout=timedelta(minutes=5))
    def commit(promoted: bool, run_id: str | None = None) -> str:
        """Commit what the run changed on branch retrain/<run id>; the commit, or '' when nothing changed."""
        branch = ref_name("retrain/", run_id or "manual")
        run(["git", "checkout", "-B", branch])
        run(["git", "add", "--", *COMMITTED])
        if run(["git", "diff", "--cached", "--quiet"], check=False).returncode == 0:
            log.info("nothing changed: no commit")
            return ""
        verdict = "promoted" if promoted else "rejected by the gate"
        run(["git", "commit", "-q", "-m", f"Retrain from the feedback inbox ({run_id}): {verdict}"])
        sha = run(["git", "rev-parse", "HEAD"]).stdout.strip()
        log.info("committed %s on %s", sha, branch)
        return sha

    @task(task_id="reload_server", retries=3, retry_delay=timedelta(seconds=30), execution_timeout=timedelta(minutes=5))
    def reload(promoted: bool, sha: str) -> dict:
        """POST /model/reload, only for a promoted model that changed something."""
        if not promoted:
            raise AirflowSkipException("the gate rejected the new model: the server keeps the champion")
        if not sha:
            raise AirflowSkipException("nothing changed: no reload")
        return reload_server()

    accepted = accept()
    enough_feedback() >> accepted
    trained = reproduce(accepted)
    promoted = gate()
    trained >> promoted
    pushed = push(promoted)
    reload(pushed, commit(pushed))


greenr_feedback()
