"""The PR workflow cannot run here: check it is valid YAML with the jobs and steps it needs."""

from __future__ import annotations

from pathlib import Path

import yaml

WORKFLOW = Path(__file__).resolve().parents[2] / ".github" / "workflows" / "pr.yml"


def _steps() -> list[dict]:
    doc = yaml.safe_load(WORKFLOW.read_text())
    return doc["jobs"]["experiment"]["steps"]


def test_workflow_triggers_on_pull_requests_and_may_comment() -> None:
    doc = yaml.safe_load(WORKFLOW.read_text())
    assert "pull_request" in doc[True]  # YAML 1.1 reads the key `on` as True
    assert doc["permissions"]["pull-requests"] == "write"


def test_minio_service_matches_the_dvc_remote() -> None:
    job = yaml.safe_load(WORKFLOW.read_text())["jobs"]["experiment"]
    minio = job["services"]["minio"]
    assert "9000:9000" in minio["ports"]
    assert minio["env"]["MINIO_DEFAULT_BUCKETS"] == "greenr"
    env = yaml.safe_load(WORKFLOW.read_text())["env"]
    assert env["AWS_ACCESS_KEY_ID"] == minio["env"]["MINIO_ROOT_USER"]
    assert env["AWS_SECRET_ACCESS_KEY"] == minio["env"]["MINIO_ROOT_PASSWORD"]


def test_steps_run_in_order() -> None:
    runs = [step.get("run", "") for step in _steps()]
    uses = [step.get("uses", "") for step in _steps()]

    def index(text: str, where: list[str]) -> int:
        return next(i for i, item in enumerate(where) if text in item)

    order = [
        index("uv sync --locked", runs),
        index("make lint", runs),
        index("dvc pull", runs),
        index("dvc repro", runs),
        index("dvc push", runs),
        index("greenr report", runs),
        index("sticky-pull-request-comment", uses),
        index("greenr promote", runs),
    ]
    assert order == sorted(order)
    assert uses[0].startswith("actions/checkout") and _steps()[0]["with"]["fetch-depth"] == 0


def test_one_sticky_comment_from_the_report() -> None:
    comment = next(s for s in _steps() if "sticky-pull-request-comment" in s.get("uses", ""))
    assert comment["with"]["header"] and comment["with"]["path"] == "reports/pr.md"
