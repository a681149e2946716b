"""Micro-batching: concurrent requests share one forward pass, off the event loop.

Handlers put (image, model, future) on a queue. One worker thread takes the first item and
whatever else is already waiting (up to `max_size`), runs each model's group as one batch and
resolves the futures. A lone request runs at once; under load, requests that arrive while a
batch computes queue up and form the next one, so batches grow with the load and no one waits
for a timer. `wait_ms` > 0 adds a fixed wait for more requests after the first (off by default:
on a quiet server it only adds latency).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from serve.model_store import LoadedModel

log = logging.getLogger("serve.batching")


@dataclass
class _Item:
    image: np.ndarray  # uint8 (3, S, S), preprocessed for `loaded`
    loaded: LoadedModel
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


_STOP = object()


class Turns:
    """Image decoding and the forward pass take turns on the CPU.

    The backend splits each layer of a forward pass across every core and waits for its slowest
    part, so one decoding thread on one core stalls every layer; decoding the waiting uploads on
    all cores between forward passes wastes less. Decoders share their turn (any number at once);
    the forward pass waits for the decodes in progress, at most `max_wait_s` (so that a stream of
    uploads cannot hold it off), and no decode starts while it runs. A quiet server pays nothing.
    """

    def __init__(self, max_wait_s: float = 0.05) -> None:
        self.max_wait_s = max_wait_s
        self._cond = threading.Condition()
        self._decoding = 0
        self._forward = False

    @contextmanager
    def decoding(self) -> Iterator[None]:
        with self._cond:
            while self._forward:
                self._cond.wait()
            self._decoding += 1
        try:
            yield
        finally:
            with self._cond:
                self._decoding -= 1
                if not self._decoding:
                    self._cond.notify_all()

    @contextmanager
    def forward(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._decoding, timeout=self.max_wait_s)
            self._forward = True
        try:
            yield
        finally:
            with self._cond:
                self._forward = False
                self._cond.notify_all()


class MicroBatcher:
    def __init__(self, max_size: int = 16, wait_ms: float = 0.0, on_batch: Callable[[int], None] | None = None) -> None:
        self.max_size = max_size
        self.wait_s = wait_ms / 1000
        self.on_batch = on_batch  # called with the batch size, for metrics
        self.turns = Turns()  # the decoding threads take turns with the forward passes
        self._queue: queue.Queue = queue.Queue()
        # One batch buffer per input shape, reused for every batch (only the worker thread touches it):
        # no per-batch allocation of max_size images.
        self._buffers: dict[tuple[int, ...], np.ndarray] = {}
        self._thread = threading.Thread(target=self._run, name="micro-batcher", daemon=True)
        self._thread.start()

    async def predict(self, image: np.ndarray, loaded: LoadedModel) -> np.ndarray:
        """Class probabilities (C,) for one preprocessed image, computed with `loaded`."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put(_Item(image, loaded, future, loop))
        return await future

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout=10)

    def _collect(self) -> list[_Item] | None:
        first = self._queue.get()
        if first is _STOP:
            return None
        items = [first]
        deadline = time.monotonic() + self.wait_s
        while len(items) < self.max_size:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                self._queue.put(_STOP)
                break
            items.append(item)
        return items

    def _run(self) -> None:
        while (items := self._collect()) is not None:
            # Group by model: requests that started before a reload finish on the old one.
            groups: dict[int, list[_Item]] = {}
            for item in items:
                groups.setdefault(id(item.loaded), []).append(item)
            for group in groups.values():
                self._run_group(group)

    def _run_group(self, group: list[_Item]) -> None:
        loaded = group[0].loaded
        try:
            batch = self._batch(group)
            with self.turns.forward():
                probs = loaded.backend.predict_proba(batch, batch_size=len(group))
            results: list[np.ndarray | BaseException] = list(probs)
        except Exception as exc:
            log.exception("batch of %d failed", len(group))
            results = [exc] * len(group)
        if self.on_batch:
            self.on_batch(len(group))
        for item, result in zip(group, results):
            try:
                item.loop.call_soon_threadsafe(_resolve, item.future, result)
            except RuntimeError:  # the event loop closed at shutdown; nobody is waiting
                pass

    def _batch(self, group: list[_Item]) -> np.ndarray:
        """The group's images in the reused buffer for their shape (a view of its first rows)."""
        shape = group[0].image.shape
        buffer = self._buffers.get(shape)
        if buffer is None or len(buffer) < len(group):
            buffer = self._buffers[shape] = np.empty((max(self.max_size, len(group)), *shape), dtype=np.uint8)
        for row, item in zip(buffer, group):
            row[...] = item.image
        return buffer[: len(group)]


def _resolve(future: asyncio.Future, result: np.ndarray | BaseException) -> None:
    if future.done():  # the client went away and the request was cancelled
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
