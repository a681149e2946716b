"""What one running app holds: settings, the model store, the micro-batcher, metrics and drift."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from greenr.ops.drift import DriftMonitor
from serve.batching import MicroBatcher
from serve.feedback import FeedbackService
from serve.metrics import Metrics
from serve.model_store import LoadedModel, ModelStore
from serve.settings import Settings

log = logging.getLogger("serve")


@dataclass
class AppState:
    settings: Settings
    store: ModelStore
    batcher: MicroBatcher
    metrics: Metrics
    drift: DriftMonitor
    feedback: FeedbackService | None = None

    def adopt(self, loaded: LoadedModel) -> None:
        """Point metrics and drift monitoring at a model that was just loaded."""
        self.metrics.set_model(loaded.version())
        if self.drift.use_reference(loaded.drift_reference):
            log.info(
                "drift: %s",
                "comparing requests with the model's training images"
                if loaded.drift_reference
                else "not monitored (no reference for this model)",
            )
