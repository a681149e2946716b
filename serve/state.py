"""What one running app holds: settings, the model store, the decoding threads, the micro-batcher,
the background observer, metrics and drift."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from greenr.ops.drift import DriftMonitor
from serve.batching import MicroBatcher
from serve.feedback import FeedbackService
from serve.metrics import Metrics
from serve.model_store import LoadedModel, ModelStore
from serve.observer import Observer
from serve.settings import Settings

log = logging.getLogger("serve")


@dataclass
class AppState:
    settings: Settings
    store: ModelStore
    decoder: ThreadPoolExecutor  # one thread per core: image decoding beside the forward pass
    batcher: MicroBatcher
    observer: Observer
    metrics: Metrics
    drift: DriftMonitor
    feedback: FeedbackService | None = None

    def adopt(self, loaded: LoadedModel) -> None:
        """Point metrics and drift monitoring at a model that was just loaded."""
        self.metrics.set_model(loaded.version(), loaded.classes)
        self.metrics.set_backend(loaded.backend.name, loaded.backend.precision)
        if self.drift.use_reference(loaded.drift_reference):
            log.info(
                "drift: %s",
                "comparing requests with the model's training images"
                if loaded.drift_reference
                else "not monitored (no reference for this model)",
            )
