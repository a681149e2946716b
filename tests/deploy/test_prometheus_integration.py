"""A real Prometheus (Debian package) on 127.0.0.1 scrapes the real API and answers queries.

The API is `python -m serve` in its own process with a drift reference of synthetic meadow
photos; the test posts darkened photos to /predict and reads the drift gauge back through
Prometheus' HTTP API, with the alert rules of deploy/monitoring loaded.
"""

from __future__ import annotations

import io
import json
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator

import httpx
import pytest
import yaml

from greenr.ops.drift import build_reference
from greenr.processes import free_ports
from tests.helpers.images import meadows, write_training_set
from tests.helpers.processes import background_server, tool
from tests.helpers.project import DEPLOY
from tests.helpers.serving import Server, write_checkpoint

WINDOW = 100


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


@pytest.fixture
def api(tmp_path) -> Iterator[Server]:
    root = tmp_path / "train"
    reference = build_reference(write_training_set(root, seed=1, count=120), root)
    (tmp_path / "drift_reference.json").write_text(json.dumps(reference.to_dict()))
    write_checkpoint(tmp_path / "stage-1.pth")
    server = Server(
        {
            "MODEL_PATH": str(tmp_path / "stage-1.pth"),
            "MODEL_PULL": "false",
            "THREADS": "1",
            "DRIFT_REFERENCE": str(tmp_path / "drift_reference.json"),
            "DRIFT_WINDOW": str(WINDOW),
            "DRIFT_MIN_SAMPLES": str(WINDOW // 2),
        },
        tmp_path / "api.log",
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture
def prometheus(tmp_path, api) -> Iterator[str]:
    rules = tmp_path / "rules.yml"
    rules.write_text((DEPLOY / "monitoring" / "rules" / "greenr.yml").read_text())
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{"job_name": "greenr-api", "static_configs": [{"targets": [f"127.0.0.1:{api.port}"]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    (port,) = free_ports()
    url = f"http://127.0.0.1:{port}"

    def is_ready() -> bool:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2):
            return True

    args = [
        tool("prometheus"),
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
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


def test_prometheus_scrapes_the_api_and_its_drift_gauges(prometheus, api) -> None:
    url = prometheus
    wait_for(url, 'up{job="greenr-api"}', lambda r: r[0]["value"][1] == "1")
    wait_for(url, 'greenr_model_ready{job="greenr-api"}', lambda r: r[0]["value"][1] == "1")
    # Too few requests yet: the gauge exists and is NaN.
    wait_for(url, 'greenr_drift_psi{feature="brightness"}', lambda r: r[0]["value"][1] == "NaN")

    with httpx.Client(base_url=api.url, timeout=30) as http:
        for _, image in meadows(2, WINDOW, darken=0.35):
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            response = http.post("/predict", files={"file": ("meadow.png", buffer.getvalue(), "image/png")})
            assert response.status_code == 200, response.text
    wait_for(
        url,
        'sum(greenr_http_requests_total{route="/predict",status="200"})',
        lambda r: float(r[0]["value"][1]) == WINDOW,
    )
    result = wait_for(
        url,
        'greenr_drift_psi{feature="brightness"}',
        lambda r: r[0]["value"][1] != "NaN" and float(r[0]["value"][1]) > 0.25,
    )
    assert result[0]["metric"]["job"] == "greenr-api"
    wait_for(url, "greenr_drift_window_images", lambda r: float(r[0]["value"][1]) == WINDOW)

    # The alert expression (without its 15 min `for`) selects the drifted feature and only it
    # among the colour-independent size features.
    drifted = wait_for(
        url,
        'max by (job, instance, feature) (greenr_drift_psi{job="greenr-api"}) > 0.25',
        lambda r: any(s["metric"]["feature"] == "brightness" for s in r),
    )
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
