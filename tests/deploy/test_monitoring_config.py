"""Prometheus config and alert rules (promtool), and the Grafana dashboard's queries."""

from __future__ import annotations

import json
import re
import subprocess

import yaml

from tests.helpers.processes import tool
from tests.helpers.project import DEPLOY, REPO

MONITORING = DEPLOY / "monitoring"
# What the dashboard and the alerts read from the API (serve/metrics.py, greenr/ops/drift.py).
API_METRICS = {
    "greenr_http_requests_total",
    "greenr_http_request_duration_seconds",
    "greenr_predictions_total",
    "greenr_prediction_confidence",
    "greenr_input_errors_total",
    "greenr_inference_batch_size",
    "greenr_model_ready",
}
DRIFT_METRICS = {"greenr_drift_psi", "greenr_drift_window_images"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [tool("promtool"), *args], capture_output=True, text=True, timeout=60, cwd=MONITORING, check=False
    )


def test_prometheus_config_is_valid() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_are_valid() -> None:
    result = promtool("check", "rules", *sorted(str(p) for p in (MONITORING / "rules").glob("*.yml")))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", "tests/greenr.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rule_unit_tests_can_fail(tmp_path) -> None:
    """The same tests against a rule file whose API-down alert never fires must fail."""
    rules = (
        (MONITORING / "rules" / "greenr.yml")
        .read_text()
        .replace('up{job="greenr-api"} == 0', 'up{job="greenr-api"} == 2')
    )
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "greenr.yml").write_text(rules)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "t.yml").write_text((MONITORING / "tests" / "greenr.test.yml").read_text())
    result = subprocess.run(
        [tool("promtool"), "test", "rules", "tests/t.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0 and "GreenrApiDown" in result.stdout + result.stderr


def test_alerts_cover_the_issue() -> None:
    rules = yaml.safe_load((MONITORING / "rules" / "greenr.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert {"GreenrApiDown", "GreenrHigh5xxRate", "GreenrHighP99Latency", "GreenrInputDrift"} <= alerts
    tested = (MONITORING / "tests" / "greenr.test.yml").read_text()
    for alert in alerts:
        assert f"alertname: {alert}" in tested, f"{alert} has no promtool unit test"


def metric_names(expr: str) -> set[str]:
    names = set(re.findall(r"\b(greenr_[a-z0-9_]+)", expr))
    out = set()
    for name in names:
        for suffix in HISTOGRAM_SUFFIXES:
            if name.endswith(suffix) and name[: -len(suffix)] in API_METRICS:
                name = name[: -len(suffix)]
        out.add(name)
    return out


def test_dashboard_queries_known_metrics() -> None:
    rules = yaml.safe_load((MONITORING / "rules" / "greenr.yml").read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    dashboards = sorted((MONITORING / "grafana" / "dashboards").glob("*.json"))
    assert dashboards
    for path in dashboards:
        board = json.loads(path.read_text())
        assert board["uid"] and board["panels"]
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids))
        for panel in board["panels"]:
            assert panel["datasource"]["uid"] == "prometheus"
            for target in panel["targets"]:
                expr = target["expr"]
                unknown = metric_names(expr) - API_METRICS - DRIFT_METRICS
                used_records = set(re.findall(r"greenr:[a-z0-9_:]+", expr))
                assert not unknown, f"{panel['title']}: unknown metrics {unknown}"
                assert used_records <= recorded, f"{panel['title']}: {used_records - recorded}"


def test_api_exports_the_metrics_the_dashboard_reads() -> None:
    """Binds the dashboard to the server's code (and the drift module's gauges)."""
    sources = {"serve/metrics.py": API_METRICS, "greenr/ops/drift.py": DRIFT_METRICS}
    for rel, names in sources.items():
        path = REPO / rel
        assert path.is_file(), f"{rel} is missing"
        text = path.read_text()
        missing = {name for name in names if f'"{name}"' not in text}
        assert not missing, f"{rel} does not define {missing}"


def amtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [tool("amtool"), *args], capture_output=True, text=True, timeout=60, cwd=MONITORING, check=False
    )


def test_alertmanager_config_is_valid() -> None:
    result = amtool("check-config", "alertmanager.yml")
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_amtool_rejects_a_route_to_a_receiver_that_does_not_exist(tmp_path) -> None:
    config = yaml.safe_load((MONITORING / "alertmanager.yml").read_text())
    config["route"]["routes"][0]["receiver"] = "retrain-on-drfit"
    (tmp_path / "broken.yml").write_text(yaml.safe_dump(config))
    result = amtool("check-config", str(tmp_path / "broken.yml"))
    assert result.returncode != 0 and "retrain-on-drfit" in result.stdout + result.stderr


def test_the_drift_alert_goes_to_the_retrain_webhook_and_other_alerts_do_not() -> None:
    def receivers(*labels: str) -> str:
        result = amtool("config", "routes", "test", "--config.file=alertmanager.yml", *labels)
        return result.stdout.strip()

    assert receivers("alertname=GreenrInputDrift", "feature=brightness") == "retrain-on-drift"
    assert receivers("alertname=GreenrApiDown") == "default"
    rules = yaml.safe_load((MONITORING / "rules" / "greenr.yml").read_text())
    alerts = {rule.get("alert") for group in rules["groups"] for rule in group["rules"]}
    assert "GreenrInputDrift" in alerts, "the route matches an alert the rules no longer define"
    config = yaml.safe_load((MONITORING / "alertmanager.yml").read_text())
    (hook,) = next(r for r in config["receivers"] if r["name"] == "retrain-on-drift")["webhook_configs"]
    assert hook["url"].endswith("/alertmanager") and hook["send_resolved"] is False
