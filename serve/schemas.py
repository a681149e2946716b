"""Response bodies, so /docs shows what each endpoint returns."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ModelVersion(BaseModel):
    arch: str
    sha256: str
    md5: str
    git_rev: str
    source: str
    # Which inference backend (greenr/backends) computed the answer, and in which precision.
    backend: str
    precision: str


class Prediction(BaseModel):
    prediction: str
    confidence: float
    probabilities: dict[str, float]
    model: ModelVersion


class BatchItem(BaseModel):
    filename: str | None
    status: int
    prediction: str | None = None
    confidence: float | None = None
    probabilities: dict[str, float] | None = None
    error: str | None = None


class BatchPrediction(BaseModel):
    results: list[BatchItem]
    model: ModelVersion


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    # The answer: true with 200 once a model serves, false with 503 before.
    ready: bool
    # A load or reload is in progress.
    loading: bool
    # Only when not ready: why the model could not be loaded.
    error: str | None = None
    # Only when ready: the last reload failed and the model in `model` kept serving.
    last_reload_error: str | None = None
    model: ModelVersion | None = None


class BackendCandidate(BaseModel):
    backend: str
    precision: str
    status: str
    agreement: dict[str, Any] | None = None
    ms_batch1: float | None = None
    ms_probe_batch: float | None = None
    detail: str | None = None


class Inference(BaseModel):
    """The backend serving the model, and every candidate tried at load time."""

    name: str
    precision: str
    threads: int
    reference: str
    settled: bool  # false while the first backend that agreed serves and the others are being timed
    candidates: list[BackendCandidate]
    # The INT8 export beside the model: its sha256, scheme, tool, calibration images and the backends
    # it passed the export check on; or `absent` saying why there is none.
    int8: dict[str, Any] = {}


class ModelInfo(ModelVersion):
    format: str
    checkpoint_sha256: str
    classes: list[str]
    image_size: int
    preprocessing: dict[str, Any]
    temperature: float
    flip_average: bool
    vflip_average: bool
    meta: dict[str, Any]
    inference: Inference
    dvc_lock_md5: str | None
    matches_dvc_lock: bool | None
    evaluate_metrics: dict[str, Any] | None
    # Whether requests are compared with this model's training images (greenr_drift_psi gauges).
    drift_monitored: bool
    loaded_at: float


class ReloadRequest(BaseModel):
    # A git revision: a name or `HEAD~1`-like expression, never an option (`-...`) for git; empty
    # or absent: the configured one.
    rev: str | None = Field(None, max_length=256, pattern=r"^([A-Za-z0-9_.@{}~^/+=][A-Za-z0-9_.@{}~^/+=-]*)?$")


class Error(BaseModel):
    detail: str
    # Also in the X-Request-ID header; the server log has the full detail under it.
    request_id: str


class FeedbackResult(BaseModel):
    id: str  # SHA-256 of the image: the same photo is always the same item
    status: str  # new, updated, unchanged, or accepted (already in a data version)
    label: str | None  # the label every vote agrees on (or a reviewer's); None: waits for a reviewer


class FeedbackConfig(BaseModel):
    enabled: bool
    token_required: bool
    review_enabled: bool


class ReviewItem(BaseModel):
    id: str
    source: str
    received: str
    predicted: str | None
    confidence: float | None
    labels_given: list[str]
    votes: dict[str, int]  # label -> how many clients gave it


class ReviewList(BaseModel):
    items: list[ReviewItem]
    classes: list[str]


class LabelRequest(BaseModel):
    label: str
