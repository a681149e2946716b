"""Image work in worker processes, in order, with bounded memory.

Decoding is CPU work under the GIL in PIL's Python layer, so threads do not scale past a couple of
cores (docs/scale.md has the measurement); the split, prepare and drift stages decode in
processes instead. `ordered_map` keeps at most `ahead` chunks in flight, so results that wait to be
consumed (JPEG bytes, hashes) never pile up beyond that, whatever the data set's size.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from itertools import chain, islice
from typing import TypeVar

from greenr.hardware import available_cpus

T = TypeVar("T")
R = TypeVar("R")


def worker_count(requested: int = 0) -> int:
    """`requested` processes, or (0) one per core this process may use; GREENR_WORKERS overrides 0."""
    if requested > 0:
        return requested
    return max(1, int(os.environ.get("GREENR_WORKERS") or available_cpus()))


def _apply(fn: Callable[[T], R], chunk: Sequence[T]) -> list[R]:
    return [fn(item) for item in chunk]


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def ordered_map(
    fn: Callable[[T], R], items: Iterable[T], workers: int = 0, chunk: int = 32, ahead: int = 4
) -> Iterator[R]:
    """`fn` of every item, in the items' order, computed in `workers` processes (0: one per core).

    `fn` must be a module-level function (it is pickled). With one worker, or a single chunk of
    work, it runs in this process: no start-up cost for small inputs.
    """
    workers = worker_count(workers)
    chunks = _chunks(items, chunk)
    first = next(chunks, None)
    if first is None:
        return
    second = next(chunks, None)
    if workers == 1 or second is None:
        for work in chain([first], [second] if second is not None else [], chunks):
            yield from _apply(fn, work)
        return
    # fork: workers start in milliseconds and inherit the imports; the callers hold no threads.
    context = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        pending: deque[Future[list[R]]] = deque()
        for work in (first, second):
            pending.append(pool.submit(_apply, fn, work))
        for work in chunks:
            while len(pending) >= workers * ahead:
                yield from pending.popleft().result()
            pending.append(pool.submit(_apply, fn, work))
        while pending:
            yield from pending.popleft().result()
