"""Micro-batching: concurrent requests share one forward pass, off the event loop.

Handlers put (image tensor, model, future) on a queue. One worker thread takes the first
item, waits at most `wait_ms` for up to `max_size - 1` more, runs each model's group as
one batch and resolves the futures. Under light load a request waits for nobody; under
heavy load the batch fills at once and the wait costs nothing.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from greenr.model.inference import predict_proba
from serve.model_store import LoadedModel

log = logging.getLogger("serve.batching")


@dataclass
class _Item:
    image: np.ndarray  # uint8 (3, S, S), preprocessed for `loaded`
    loaded: LoadedModel
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


_STOP = object()


class MicroBatcher:
    def __init__(self, max_size: int = 16, wait_ms: float = 3.0, on_batch=None) -> None:
        self.max_size = max_size
        self.wait_s = wait_ms / 1000
        self.on_batch = on_batch  # called with the batch size, for metrics
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="micro-batcher", daemon=True)
        self._thread.start()

    async def predict(self, image: np.ndarray, loaded: LoadedModel) -> torch.Tensor:
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
            probs = predict_proba(
                loaded.model,
                torch.from_numpy(np.stack([i.image for i in group])),
                loaded.ckpt.preprocessing,
                batch_size=len(group),
            )
            results: list[torch.Tensor | BaseException] = list(probs)
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


def _resolve(future: asyncio.Future, result: torch.Tensor | BaseException) -> None:
    if future.done():  # the client went away and the request was cancelled
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
