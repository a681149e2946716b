"""The app: settings, model store, decoding threads, micro-batcher, observer, metrics and drift monitor
wired into FastAPI routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from greenr import processes
from greenr.errors import GreenrError
from greenr.hardware import available_cpus
from greenr.ops.drift import DriftMonitor
from serve import errors
from serve.batching import MicroBatcher
from serve.feedback import FeedbackService
from serve.metrics import Metrics
from serve.middleware import JsonErrors, RequestId, RequestMetricsMiddleware
from serve.model_store import ModelStore
from serve.observer import Observer
from serve.routes import feedback, health, metrics, model, page, predict
from serve.settings import Settings, get_settings
from serve.state import AppState

log = logging.getLogger("serve")
# How long shutting down waits for the background timing of backends (a few seconds at most).
SETTLE_WAIT_S = 20.0


async def _initial_load(state: AppState) -> None:
    """Load in a thread; the server answers /health and /ready (503) meanwhile."""
    try:
        loaded = await asyncio.to_thread(state.store.load)
        state.adopt(loaded)
    except GreenrError:
        pass  # already logged, and shown at /ready; /model/reload can try again


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        threads = settings.threads or available_cpus()
        metrics_ = app.state.metrics
        store = ModelStore(
            settings.model_path,
            settings.model_rev,
            settings.model_pull,
            threads,
            drift_reference=settings.drift_reference or None,
            backend=settings.backend,
            precision=settings.precision,
        )
        state = AppState(
            settings=settings,
            store=store,
            decoder=ThreadPoolExecutor(threads, thread_name_prefix="decode"),
            batcher=MicroBatcher(settings.batch_max_size, settings.batch_wait_ms, on_batch=metrics_.batch_size.observe),
            observer=Observer(on_drop=metrics_.observations_dropped.inc),
            metrics=metrics_,
            drift=app.state.drift,
        )
        state.feedback = feedback_ = FeedbackService(settings)
        store.on_change = state.adopt
        app.state.greenr = state
        loading = asyncio.create_task(_initial_load(state))
        try:
            yield
        finally:
            loading.cancel()
            await feedback_.close()
            state.batcher.close()
            state.observer.close()
            state.decoder.shutdown(wait=False, cancel_futures=True)
            # A `dvc pull` of the model still running in a worker thread would hold up the exit.
            await asyncio.to_thread(processes.stop_all)
            # Backends still being timed run native code: the process must not go away under them.
            if not await asyncio.to_thread(store.close, SETTLE_WAIT_S):
                log.warning("backends still being timed after %.0f s; stopping anyway", SETTLE_WAIT_S)

    app = FastAPI(
        title="greenr",
        version="0.1.0",
        lifespan=lifespan,
        description="Image classifier serving the DVC-tracked model (ONNX export or checkpoint); "
        "its classes are those the model was trained on (GET /model).",
    )
    app.state.metrics = Metrics()
    # Registered once per app; it reports nothing until a model with a drift reference loads.
    app.state.drift = DriftMonitor(None, settings.drift_window, settings.drift_min_samples, settings.drift_threshold)
    app.state.drift.register_gauges(app.state.metrics.registry)
    app.add_middleware(RequestMetricsMiddleware, metrics=app.state.metrics)
    app.add_middleware(JsonErrors)  # inside RequestId: the id is known, and its header is added after
    app.add_middleware(RequestId)  # outermost: every answer, errors included, has an id
    # Error answers: a short public message and the request id; the detail goes to the log.
    app.add_exception_handler(HTTPException, errors.http_error)
    app.add_exception_handler(RequestValidationError, errors.validation_error)
    app.add_exception_handler(GreenrError, errors.greenr_error)
    app.add_exception_handler(Exception, errors.unexpected_error)
    app.include_router(predict.build_router(settings))
    app.include_router(health.router)
    app.include_router(model.router)
    app.include_router(metrics.router)
    app.include_router(page.router)
    app.include_router(feedback.build_router(settings))
    return app


def app() -> FastAPI:
    """Factory for `uvicorn --factory serve.main:app`."""
    return create_app()
