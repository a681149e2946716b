"""A real Prometheus (Debian package) on 127.0.0.1 scrapes the drift gauges and answers queries.

The exporter is prometheus_client's own HTTP server with a DriftMonitor registered, the same
collector the API registers; the alert rules of deploy/monitoring are loaded as well.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator

import pytest
import yaml
from prometheus_client import CollectorRegistry, start_http_server

from greenr.drift import DriftMonitor, build_reference
from tests.deploy.conftest import DEPLOY, background_server, free_ports, tool
from tests.deploy.drift_images import meadows, write_training_set


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


@pytest.fixture
def exporter(tmp_path) -> Iterator[tuple[int, DriftMonitor]]:
    root = tmp_path / "train"
    reference = build_reference(write_training_set(root, seed=1, count=120), root)
    monitor = DriftMonitor(reference, window=100, min_samples=50)
    registry = CollectorRegistry()
    monitor.register_gauges(registry)
    (port,) = free_ports()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        yield port, monitor
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def prometheus(tmp_path, exporter) -> Iterator[str]:
    exporter_port, _ = exporter
    rules = tmp_path / "rules.yml"
    rules.write_text((DEPLOY / "monitoring" / "rules" / "greenr.yml").read_text())
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "rule_files": [str(rules)],
              "scrape_configs": [{"job_name": "greenr-api",
                                  "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]}]}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    (port,) = free_ports()
    url = f"http://127.0.0.1:{port}"

    def is_ready() -> bool:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2):
            return True

    args = [tool("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"]
    with background_server(args, tmp_path / "prometheus.log", is_ready, timeout=30):
        yield url


def query(url: str, promql: str) -> list[dict]:
    answer = get_json(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}")
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def wait_for(url: str, promql: str, predicate, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        result = query(url, promql)
        if result and predicate(result):
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{promql} never satisfied the check; last answer {result}")
        time.sleep(0.5)


def test_prometheus_scrapes_the_drift_gauges(prometheus, exporter) -> None:
    _, monitor = exporter
    url = prometheus
    wait_for(url, 'up{job="greenr-api"}', lambda r: r[0]["value"][1] == "1")
    # Too few requests yet: the gauge exists and is NaN.
    wait_for(url, 'greenr_drift_psi{feature="brightness"}', lambda r: r[0]["value"][1] == "NaN")

    for label, image in meadows(2, 100, darken=0.35):
        monitor.observe(image, label=label)
    result = wait_for(url, 'greenr_drift_psi{feature="brightness"}',
                      lambda r: r[0]["value"][1] != "NaN" and float(r[0]["value"][1]) > 0.25)
    assert result[0]["metric"]["job"] == "greenr-api"
    wait_for(url, "greenr_drift_window_images", lambda r: float(r[0]["value"][1]) == 100)

    # The alert expression (without its 15 min `for`) selects the drifted feature and only it
    # among the colour-independent size features.
    drifted = wait_for(url, 'max by (job, instance, feature) (greenr_drift_psi{job="greenr-api"}) > 0.25',
                       lambda r: any(s["metric"]["feature"] == "brightness" for s in r))
    assert "aspect_ratio" not in {s["metric"]["feature"] for s in drifted}

    # The real rule file is loaded and its drift alert goes pending (it fires after 15 minutes).
    deadline = time.monotonic() + 30
    while True:
        groups = get_json(f"{url}/api/v1/rules")["data"]["groups"]
        loaded = {rule["name"]: rule for group in groups for rule in group["rules"]}
        assert loaded["GreenrInputDrift"]["health"] == "ok", loaded["GreenrInputDrift"]
        if loaded["GreenrInputDrift"]["state"] == "pending":
            break
        assert time.monotonic() < deadline, f"GreenrInputDrift never went pending: {loaded['GreenrInputDrift']}"
        time.sleep(0.5)
    assert "brightness" in {a["labels"]["feature"] for a in loaded["GreenrInputDrift"]["alerts"]}
    assert loaded["GreenrApiDown"]["state"] == "inactive"
