"""Feedback and uncertain inputs into the inbox: rate limits, the inbox-size cap, and captures that
never slow down or fail a prediction (the inbox itself: greenr/ops/inbox.py)."""

from __future__ import annotations

import asyncio
import collections
import hmac
import logging
import threading
import time
from pathlib import Path

from greenr.errors import GreenrError
from greenr.ops.inbox import Inbox, InboxUnavailable, Submitted, open_inbox
from serve.settings import Settings

log = logging.getLogger("serve.feedback")
# How long the pending-item count (one listing of the inbox) is trusted before it is read again.
COUNT_TTL_S = 30.0


class RateLimited(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"retry in {retry_after:.0f} s")
        self.retry_after = retry_after


class InboxFull(Exception):
    pass


class HourlyLimit:
    """At most `per_hour` events in any sliding hour (per server process)."""

    def __init__(self, per_hour: int) -> None:
        self.per_hour = per_hour
        self._times: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()

    def take(self) -> float | None:
        """Record one event; None if allowed, else the seconds until one is."""
        now = time.monotonic()
        with self._lock:
            while self._times and now - self._times[0] >= 3600:
                self._times.popleft()
            if len(self._times) >= self.per_hour:
                return 3600 - (now - self._times[0])
            self._times.append(now)
            return None


def token_matches(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


class FeedbackService:
    """The server's side of the inbox: found at first use (the store, else .state/inbox), then kept."""

    def __init__(self, settings: Settings, root: Path | None = None) -> None:
        self.settings = settings
        self.root = root
        self._inbox: Inbox | None = None
        self._open_lock = threading.Lock()
        self.feedback_limit = HourlyLimit(settings.feedback_max_per_hour)
        self.capture_limit = HourlyLimit(settings.capture_max_per_hour)
        self._pending: tuple[int, float] | None = None  # (count, when it was read)
        self._tasks: set[asyncio.Task] = set()

    def inbox(self) -> Inbox:
        """Blocking (it may probe the store): call it from a worker thread."""
        with self._open_lock:
            if self._inbox is None:
                self._inbox = open_inbox(self.root, self.settings.feedback_inbox)
                log.info("feedback inbox: %s", self._inbox.where)
            return self._inbox

    def _check_room(self, inbox: Inbox) -> None:
        now = time.monotonic()
        if self._pending is None or now - self._pending[1] > COUNT_TTL_S:
            self._pending = (inbox.count(), now)
        if self._pending[0] >= self.settings.feedback_max_items:
            raise InboxFull(
                f"the inbox is full ({self._pending[0]} pending items, FEEDBACK_MAX_ITEMS "
                f"{self.settings.feedback_max_items}): run `greenr inbox accept`, or review what waits"
            )

    def submit(self, data: bytes, *, limit: HourlyLimit, **fields: object) -> Submitted:
        """Store one item (blocking). Raises RateLimited, InboxFull or InboxUnavailable; nothing else."""
        wait = limit.take()
        if wait is not None:
            raise RateLimited(wait)
        try:
            inbox = self.inbox()
            self._check_room(inbox)
            done = inbox.submit(data, **fields)  # type: ignore[arg-type]
        except (InboxFull, InboxUnavailable):
            raise
        except GreenrError as err:
            raise InboxUnavailable(f"inbox unavailable: {err.what}", err.fix) from None
        except Exception as exc:  # the store's client failing in a way nobody foresaw: still no 500
            log.exception("storing feedback failed")
            raise InboxUnavailable(f"inbox unavailable: {type(exc).__name__}: {exc}", "see the server log") from None
        if done.status == "new" and self._pending is not None:
            self._pending = (self._pending[0] + 1, self._pending[1])
        return done

    def capture_uncertain(self, data: bytes, predicted: str, confidence: float, model_sha256: str) -> None:
        """Keep a prediction below CAPTURE_BELOW_CONFIDENCE for review, in the background; never raises."""
        threshold = self.settings.capture_below_confidence
        if threshold is None or confidence >= threshold:
            return
        task = asyncio.get_running_loop().create_task(
            asyncio.to_thread(self._capture, data, predicted, confidence, model_sha256)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _capture(self, data: bytes, predicted: str, confidence: float, model_sha256: str) -> None:
        try:
            done = self.submit(
                data,
                limit=self.capture_limit,
                label=None,
                source="uncertain",
                predicted=predicted,
                confidence=round(confidence, 6),
                model_sha256=model_sha256,
            )
            log.info("uncertain input (%s, %.2f) captured: %s", predicted, confidence, done.status)
        except (RateLimited, InboxFull, InboxUnavailable) as exc:
            log.warning("uncertain input not captured: %s", exc)

    async def close(self, timeout: float = 10.0) -> None:
        """Let captures in flight finish (bounded), so a stopping server does not cut them off."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
