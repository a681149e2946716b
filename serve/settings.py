"""Server settings: one class, read from the environment (and a `.env` file if present)."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from greenr.data.images import DEFAULT_MAX_PIXELS
from greenr.ops.drift import DEFAULT_THRESHOLD
from greenr.paths import DRIFT_REFERENCE, MODEL_PATH


class Settings(BaseSettings):
    """Every knob of the server; environment variables use the same names in upper case."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", protected_namespaces=())

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    # Relative paths are resolved against the project root (greenr.paths.repo_root).
    model_path: str = MODEL_PATH
    # A git revision, tag or experiment: read that checkpoint from the DVC remote, no checkout.
    model_rev: str | None = None
    # Pull the checkpoint from the DVC remote when it is missing from the workspace.
    model_pull: bool = True
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    max_batch_files: int = Field(16, ge=1, le=256)
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1024)
    # Empty: POST /model/reload is disabled.
    reload_token: str | None = None
    # Micro-batching: wait at most this long for more requests to share one forward pass.
    batch_wait_ms: float = Field(3.0, ge=0, le=100)
    batch_max_size: int = Field(16, ge=1, le=256)
    # Input drift: PSI of the last `drift_window` requests against the statistics of the model's
    # training images (read from the same revision as the model; empty: drift not monitored).
    drift_reference: str | None = DRIFT_REFERENCE
    drift_window: int = Field(500, ge=1)
    drift_min_samples: int = Field(100, ge=1)
    drift_threshold: float = Field(DEFAULT_THRESHOLD, gt=0)
    # 0 = one per core this process may use.
    threads: int = Field(0, ge=0, le=256)
    log_level: str = "info"

    # --- Feedback and uncertain inputs: POST /feedback, /review, into the inbox (greenr inbox ...) ---
    # Off unless enabled: POST /feedback answers 503 until FEEDBACK=on.
    feedback: bool = False
    # Bearer token POST /feedback requires; unset: anyone who can reach the server may send feedback.
    feedback_token: str | None = None
    # Bearer token of /review (list and label the items without a label); unset: review is disabled.
    review_token: str | None = None
    # auto: the DVC remote's object store if it answers at first use, else .state/inbox;
    # store: only the object store (503 while it is down); local: only .state/inbox.
    feedback_inbox: Literal["auto", "store", "local"] = "auto"
    # Items stored per hour by this process (feedback), and pending items the inbox may hold.
    feedback_max_per_hour: int = Field(600, ge=1)
    feedback_max_items: int = Field(5000, ge=1)
    # Store the image of a prediction below this confidence, unlabeled, for review (unset: off),
    # at most capture_max_per_hour per hour.
    capture_below_confidence: float | None = Field(None, gt=0, le=1)
    capture_max_per_hour: int = Field(60, ge=1)

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
