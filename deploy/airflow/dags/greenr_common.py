"""What the greenr DAGs share (this file defines none): where the project is, running its commands in
its checkout, and asking the prediction server to reload. Set by the Airflow workers' environment:

    GREENR_REPO         the checkout to run in (default: the one this file lives in). Give Airflow a
                        checkout of its own: runs change params.yaml, data/ and git branches there.
    GREENR_PYTHON       the project's Python            (default: $GREENR_REPO/.venv/bin/python)
    GREENR_CLI          the project's CLI                (default: $GREENR_REPO/.venv/bin/greenr)
    UV_PROJECT_ENVIRONMENT  the project's venv folder when it is not .venv (e.g. .venv-3.12)
    GREENR_API_URL      the server to reload; empty skips the reload (default: http://127.0.0.1:8000)
    RELOAD_TOKEN        bearer token of POST /model/reload
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

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

log = logging.getLogger(__name__)

REPO = Path(os.environ.get("GREENR_REPO") or Path(__file__).resolve().parents[3])
VENV_BIN = REPO / (os.environ.get("UV_PROJECT_ENVIRONMENT") or ".venv") / "bin"
PYTHON = os.environ.get("GREENR_PYTHON") or str(VENV_BIN / "python")
CLI = os.environ.get("GREENR_CLI") or str(VENV_BIN / "greenr")
API_URL = os.environ.get("GREENR_API_URL", "http://127.0.0.1:8000")
DEFAULT_ARGS = {
    "owner": "greenr",
    "retries": 2,
    "retry_delay": timedelta(minutes=2),
    "retry_exponential_backoff": True,
    "execution_timeout": timedelta(minutes=30),
}


def ref_name(prefix: str, run_id: str) -> str:
    """A git-ref-safe name for an Airflow run (DVC experiment names and branches are git refs)."""
    return prefix + re.sub(r"[^A-Za-z0-9_-]+", "-", run_id).strip("-")[:60]


def run(args: list[str], timeout: float | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command in the checkout and log its output; with `check`, a non-zero exit fails the task."""
    env = os.environ.copy()
    # dvc (and `dvc exp` workers) must come from the project's venv.
    env["PATH"] = f"{Path(PYTHON).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("DVC_NO_ANALYTICS", "1")
    log.info("$ %s   (in %s)", " ".join(args), REPO)
    result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    for line in (result.stdout + result.stderr).splitlines():
        log.info("%s", line)
    if check and result.returncode != 0:
        raise RuntimeError(f"`{' '.join(args)}` exited with {result.returncode}")
    return result


def reload_server(rev: str = "") -> dict:
    """POST /model/reload so the server swaps to the new model without dropping requests."""
    if not API_URL:
        raise AirflowSkipException("GREENR_API_URL is empty: no server to reload")
    token = os.environ.get("RELOAD_TOKEN", "")
    if not token:
        raise AirflowFailException("RELOAD_TOKEN is not set in the Airflow environment")
    request = urllib.request.Request(
        f"{API_URL.rstrip('/')}/model/reload",
        method="POST",
        data=json.dumps({"rev": rev}).encode() if rev else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
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
