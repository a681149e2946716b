"""/metrics: requests, predictions and the model, in Prometheus text."""

from __future__ import annotations

from fastapi.testclient import TestClient

from greenr.data.upload_corpus import encode, photo


def test_metrics_exposes_requests_predictions_and_model(client: TestClient) -> None:
    client.post("/predict", files={"file": ("a.png", encode(photo(), "PNG"), "image/png")})
    client.post("/predict", files={"file": ("a.txt", b"nope", "text/plain")})
    text = client.get("/metrics").text
    assert 'greenr_http_requests_total{method="POST",route="/predict",status="200"}' in text
    assert 'greenr_http_requests_total{method="POST",route="/predict",status="400"}' in text
    assert "greenr_http_request_duration_seconds_bucket" in text
    assert "greenr_predictions_total{label=" in text
    assert "greenr_prediction_confidence_bucket" in text
    assert 'greenr_model_info{arch="resnet18"' in text
    client.get("/no/such/path/123")
    assert "/no/such/path/123" not in client.get("/metrics").text
