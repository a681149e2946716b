"""Drift monitoring in the API: requests are compared with the model's drift reference."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from greenr.ops.drift import CLASS_FEATURE, FEATURES, build_reference
from serve.main import create_app
from tests.helpers.images import meadows, write_training_set
from tests.helpers.serving import make_settings, wait_ready

WINDOW = 100
THRESHOLD = 0.25


@pytest.fixture(scope="module")
def reference_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train")
    reference = build_reference(write_training_set(root, seed=1, count=200), root)
    path = root / "drift_reference.json"
    path.write_text(json.dumps(reference.to_dict()))
    return path


def drift_client(ckpt_path: Path, reference: Path) -> TestClient:
    settings = make_settings(
        ckpt_path,
        drift_reference=str(reference),
        drift_window=WINDOW,
        drift_min_samples=WINDOW // 2,
        drift_threshold=THRESHOLD,
    )
    return TestClient(create_app(settings), raise_server_exceptions=False)


@pytest.fixture
def client(ckpt_path: Path, reference_path: Path) -> Iterator[TestClient]:
    with drift_client(ckpt_path, reference_path) as test_client:
        wait_ready(test_client)
        yield test_client


def post_meadows(client: TestClient, seed: int, count: int, **shift: float) -> None:
    for _, image in meadows(seed, count, **shift):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        response = client.post("/predict", files={"file": ("m.png", buffer.getvalue(), "image/png")})
        assert response.status_code == 200, response.text


def gauges(client: TestClient) -> dict[str, float]:
    """greenr_drift_* samples from GET /metrics: `psi:<feature>`, `window`, `threshold`."""
    text = client.get("/metrics").text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "greenr_drift_psi":
                out[f"psi:{sample.labels['feature']}"] = sample.value
            elif sample.name == "greenr_drift_window_images":
                out["window"] = sample.value
            elif sample.name == "greenr_drift_psi_threshold":
                out["threshold"] = sample.value
    return out


def test_gauges_are_nan_until_the_window_has_enough_requests(client: TestClient) -> None:
    assert client.get("/model").json()["drift_monitored"] is True
    post_meadows(client, seed=2, count=10)
    values = gauges(client)
    assert values["window"] == 10
    assert values["threshold"] == THRESHOLD
    assert math.isnan(values["psi:brightness"])


def test_unshifted_requests_stay_below_the_threshold(client: TestClient) -> None:
    post_meadows(client, seed=3, count=WINDOW)
    values = gauges(client)
    assert values["window"] == WINDOW
    psi = {k: v for k, v in values.items() if k.startswith("psi:")}
    assert set(psi) == {f"psi:{name}" for name in (*FEATURES, CLASS_FEATURE)}
    # Not the class balance: an untrained model's predictions need not match the training shares.
    assert all(v < THRESHOLD for k, v in psi.items() if k != f"psi:{CLASS_FEATURE}"), psi


def test_darker_requests_cross_the_threshold(client: TestClient) -> None:
    post_meadows(client, seed=4, count=WINDOW)
    before = gauges(client)["psi:brightness"]
    post_meadows(client, seed=5, count=WINDOW, darken=0.35)  # the window now holds only dark images
    values = gauges(client)
    assert before < THRESHOLD < values["psi:brightness"], (before, values)
    assert values["psi:aspect_ratio"] < THRESHOLD  # sizes did not change


def test_bluer_requests_cross_the_colour_balance_threshold(client: TestClient) -> None:
    post_meadows(client, seed=6, count=WINDOW, blue_shift=90)
    values = gauges(client)
    assert values["psi:blue_share"] > THRESHOLD
    assert values["psi:green_share"] > THRESHOLD


def test_without_a_reference_the_server_serves_and_reports_no_psi(ckpt_path: Path, tmp_path: Path) -> None:
    with drift_client(ckpt_path, tmp_path / "missing.json") as client:
        wait_ready(client)
        assert client.get("/model").json()["drift_monitored"] is False
        post_meadows(client, seed=7, count=5)
        values = gauges(client)
        assert values["window"] == 0
        assert not any(k.startswith("psi:") for k in values)


def test_a_corrupt_reference_only_turns_drift_off(ckpt_path: Path, tmp_path: Path) -> None:
    bad = tmp_path / "drift_reference.json"
    bad.write_text("{not json")
    with drift_client(ckpt_path, bad) as client:
        wait_ready(client)
        assert client.get("/model").json()["drift_monitored"] is False
        post_meadows(client, seed=8, count=2)


def test_requests_that_are_not_images_do_not_enter_the_window(client: TestClient) -> None:
    response = client.post("/predict", files={"file": ("x.png", b"not an image", "image/png")})
    assert response.status_code == 400
    image = Image.new("RGB", (64, 48), (60, 130, 50))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    assert client.post("/predict", files={"file": ("m.png", buffer.getvalue(), "image/png")}).status_code == 200
    assert gauges(client)["window"] == 1
