"""Prometheus metrics, in a registry per app (so tests can build many apps in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "greenr_http_requests_total",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "greenr_http_request_duration_seconds",
            "Request latency by route",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.predictions = Counter(
            "greenr_predictions_total", "Predictions by predicted class", ["label"], registry=self.registry
        )
        self.confidence = Histogram(
            "greenr_prediction_confidence",
            "Probability of the predicted class",
            buckets=(0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0),
            registry=self.registry,
        )
        self.input_errors = Counter(
            "greenr_input_errors_total", "Rejected inputs by reason", ["kind"], registry=self.registry
        )
        self.batch_size = Histogram(
            "greenr_inference_batch_size",
            "Images per forward pass",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )
        self.model_info = Gauge(
            "greenr_model_info",
            "The model being served (value 1)",
            ["arch", "sha256", "git_rev", "source"],
            registry=self.registry,
        )
        self.model_ready = Gauge("greenr_model_ready", "1 when a model is loaded", registry=self.registry)
        self.backend_info = Gauge(
            "greenr_inference_backend_info",
            "The inference backend and precision serving the model (value 1)",
            ["backend", "precision"],
            registry=self.registry,
        )
        self.observations_dropped = Counter(
            "greenr_observations_dropped_total",
            "Requests left out of prediction metrics and drift because the background queue was full",
            registry=self.registry,
        )

    def set_model(self, version: dict, classes: list[str]) -> None:
        """The served model's identity; its classes' prediction series exist from the start (at 0),
        so a dashboard lists every class, also one never predicted yet."""
        for name in classes:
            self.predictions.labels(name)
        self.model_info.clear()
        self.model_info.labels(version["arch"], version["sha256"], version["git_rev"], version["source"]).set(1)
        self.model_ready.set(1)

    def set_backend(self, backend: str, precision: str) -> None:
        self.backend_info.clear()
        self.backend_info.labels(backend, precision).set(1)
