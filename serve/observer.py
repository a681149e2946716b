"""Work a request leaves for after its response: drift features and prediction metrics.

One background thread does it, so a request pays only for decoding and the forward pass. The
queue is bounded: under overload observations are dropped (and counted), never requests
slowed. A Prometheus scrape first waits for the queue to empty (`drain`), so /metrics always
counts every request that was answered before it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

log = logging.getLogger("serve.observer")

_STOP = object()


class Observer:
    def __init__(self, max_pending: int = 1024, on_drop: Callable[[], None] | None = None) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._on_drop = on_drop
        self._idle = threading.Condition()
        self._pending = 0
        self._thread = threading.Thread(target=self._run, name="observer", daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        """Run `job` soon, in the background; dropped (and counted) when the queue is full."""
        with self._idle:
            self._pending += 1
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self._done()
            if self._on_drop:
                self._on_drop()

    def drain(self, timeout: float = 5.0) -> bool:
        """Wait until every submitted job has run; False if `timeout` passed first."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    def close(self) -> None:
        try:
            self._queue.put(_STOP, timeout=5)
        except queue.Full:
            return  # a daemon thread: it ends with the process
        self._thread.join(timeout=10)

    def _done(self) -> None:
        with self._idle:
            self._pending -= 1
            if not self._pending:
                self._idle.notify_all()

    def _run(self) -> None:
        while (job := self._queue.get()) is not _STOP:
            try:
                job()
            except Exception:
                log.exception("background observation failed; the request was already answered")
            finally:
                self._done()
