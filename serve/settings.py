"""Server settings: one class, read from the environment (and a `.env` file if present)."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from greenr.data.images import DEFAULT_MAX_PIXELS
from greenr.ops.drift import DEFAULT_THRESHOLD
from greenr.ops.inbox import DEFAULT_MAX_UPLOAD_BYTES, DEFAULT_MIN_AGREEING
from greenr.paths import DRIFT_REFERENCE, ONNX_MODEL_PATH


class Settings(BaseSettings):
    """Every knob of the server; environment variables use the same names in upper case."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", protected_namespaces=())

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    # The ONNX export (stage `export`), or the checkpoint (models/stage-1.pth, torch backend only).
    # Relative paths are resolved against the project root (greenr.paths.repo_root).
    model_path: str = ONNX_MODEL_PATH
    # A git revision, tag or experiment: read that model file from the DVC remote, no checkout.
    model_rev: str | None = None
    # Pull the model file from the DVC remote when it is missing from the workspace.
    model_pull: bool = True
    # Inference backend (greenr/backends): auto = the fastest installed one that agrees with the
    # reference on the probe batch; torch runs the checkpoint, onnxruntime and openvino the export.
    backend: Literal["auto", "onnxruntime", "openvino", "torch"] = "auto"
    # auto = the fastest that agrees: bf16 where the CPU has it natively (AMX / AVX512-BF16), the INT8
    # export where the export stage certified it for the backend, fp32. A named one is preferred
    # (fp32 when it cannot serve; /model says why).
    precision: Literal["auto", "fp32", "bf16", "int8"] = "auto"
    max_upload_bytes: int = Field(DEFAULT_MAX_UPLOAD_BYTES, ge=1024)
    max_batch_files: int = Field(16, ge=1, le=256)
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1024)
    # Empty: POST /model/reload is disabled.
    reload_token: str | None = None
    # Micro-batching: requests that queue while a batch computes share the next forward pass.
    # A fixed wait for more requests after the first (0: none; a lone request runs at once).
    batch_wait_ms: float = Field(0.0, ge=0, le=100)
    batch_max_size: int = Field(16, ge=1, le=256)
    # Input drift: PSI of the last `drift_window` requests against the statistics of the model's
    # training images (read from the same revision as the model; empty: drift not monitored).
    drift_reference: str | None = DRIFT_REFERENCE
    drift_window: int = Field(500, ge=1)
    drift_min_samples: int = Field(100, ge=1)
    drift_threshold: float = Field(DEFAULT_THRESHOLD, gt=0)
    # Inference threads, and image-decoding threads; 0 = one per core this process may use
    # (CPU affinity, capped by a cgroup CPU quota).
    threads: int = Field(0, ge=0, le=256)
    log_level: str = "info"
    # One log line per request (uvicorn's access log); /metrics counts and times them anyway.
    access_log: bool = False

    # --- Feedback and uncertain inputs: POST /feedback, /review, into the inbox (greenr inbox ...) ---
    # Off unless enabled: POST /feedback answers 503 until FEEDBACK=on.
    feedback: bool = False
    # Bearer token(s) POST /feedback requires, comma-separated: give each client its own, since a
    # token is its holder's identity (votes and rate limits); unset: anyone who can reach the server
    # may send feedback, identified by client address.
    feedback_token: str | None = None
    # Bearer token of /review (list and label the items that need a reviewer); unset: review is disabled.
    review_token: str | None = None
    # auto: the DVC remote's object store if it answers at first use, else .state/inbox;
    # store: only the object store (503 while it is down); local: only .state/inbox.
    feedback_inbox: Literal["auto", "store", "local"] = "auto"
    # Independent agreeing votes (and none against) that let `greenr inbox accept` take a label
    # without a reviewer; items with fewer wait on /review. The inbox CLI reads it too.
    feedback_min_agreeing: int = Field(DEFAULT_MIN_AGREEING, ge=1)
    # Rate limits of this process (token buckets, refilled continuously): per client (token identity,
    # else address) and for everyone together; re-sending what a client already sent costs nothing.
    feedback_client_max_per_hour: int = Field(60, ge=1)
    feedback_max_per_hour: int = Field(600, ge=1)
    # Pending items the inbox may hold.
    feedback_max_items: int = Field(5000, ge=1)
    # Store the image of a prediction below this confidence, unlabeled, for review (unset: off),
    # at most capture_client_max_per_hour per client and capture_max_per_hour in all.
    capture_below_confidence: float | None = Field(None, gt=0, le=1)
    capture_client_max_per_hour: int = Field(10, ge=1)
    capture_max_per_hour: int = Field(60, ge=1)

    @property
    def feedback_tokens(self) -> list[str]:
        """FEEDBACK_TOKEN's tokens ([]: no token required)."""
        return [token.strip() for token in (self.feedback_token or "").split(",") if token.strip()]

    @model_validator(mode="after")
    def _check_drift_window(self) -> Settings:
        if self.drift_min_samples > self.drift_window:
            raise ValueError(
                f"drift_min_samples ({self.drift_min_samples}) must not exceed drift_window ({self.drift_window})"
            )
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()
