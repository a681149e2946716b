"""Feedback and uncertain inputs into the inbox: who sent them, rate limits per client and in all,
the inbox-size cap, and captures that never slow down or fail a prediction (the inbox itself:
greenr/ops/inbox.py)."""

from __future__ import annotations

import asyncio
import collections
import hmac
import ipaddress
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request

from greenr.errors import GreenrError
from greenr.ops.inbox import Inbox, InboxUnavailable, Submitted, open_inbox, sha256_of, voter_id
from serve.settings import Settings

log = logging.getLogger("serve.feedback")
# How long the pending-item count (one listing of the inbox) is trusted before it is read again.
COUNT_TTL_S = 30.0
# Clients whose buckets are kept, the least recently seen forgotten first (a forgotten client starts
# afresh: the global ceiling still holds).
MAX_CLIENTS = 10_000
# What a client sent and the inbox already has: re-sending it costs no budget and no store access.
MAX_REMEMBERED = 10_000
REMEMBER_S = 3600.0


class RateLimited(Exception):
    def __init__(self, retry_after: float, whose: str) -> None:
        super().__init__(f"{whose}: retry in {retry_after:.0f} s")
        self.retry_after = retry_after


class InboxFull(Exception):
    pass


class TokenBucket:
    """`per_hour` events an hour, refilled continuously (one every 3600/per_hour s); a full bucket
    lets a burst of `per_hour` through. Not thread-safe: RateLimits holds the lock."""

    def __init__(self, per_hour: int, now: float) -> None:
        self.capacity = float(per_hour)
        self.rate = per_hour / 3600.0
        self.tokens = self.capacity
        self.stamp = now

    def _refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self, now: float) -> float | None:
        """Take one token; None if there was one, else the seconds until there is."""
        self._refill(now)
        if self.tokens >= 1:
            self.tokens -= 1
            return None
        return (1 - self.tokens) / self.rate

    def give_back(self) -> None:
        self.tokens = min(self.capacity, self.tokens + 1)


class RateLimits:
    """A token bucket per client and one for everyone together (the global ceiling), per process.

    One client at full speed empties its own bucket long before the shared one, so it cannot
    starve the others; many clients together still meet the ceiling.
    """

    def __init__(self, per_client_per_hour: int, per_hour: int, what: str) -> None:
        self.per_client = per_client_per_hour
        self.what = what
        self._global = TokenBucket(per_hour, time.monotonic())
        self._clients: collections.OrderedDict[str, TokenBucket] = collections.OrderedDict()
        self._lock = threading.Lock()

    def take(self, client: str) -> None:
        """Charge `client` one event, or raise RateLimited saying when to retry."""
        now = time.monotonic()
        with self._lock:
            bucket = self._clients.pop(client, None) or TokenBucket(self.per_client, now)
            self._clients[client] = bucket  # most recently used last
            while len(self._clients) > MAX_CLIENTS:
                self._clients.popitem(last=False)
            wait = bucket.take(now)
            if wait is not None:
                raise RateLimited(wait, f"too much {self.what} from this client")
            wait = self._global.take(now)
            if wait is not None:
                bucket.give_back()
                raise RateLimited(wait, f"too much {self.what} on this server")

    def give_back(self, client: str) -> None:
        """Refund one event (it turned out to store nothing new)."""
        with self._lock:
            self._global.give_back()
            if client in self._clients:
                self._clients[client].give_back()


class RecentSends:
    """What each client sent recently and the inbox took (client, image, label) -> the item's label
    then: an identical re-send is answered from here, free of budget and store access."""

    def __init__(self) -> None:
        self._seen: collections.OrderedDict[tuple[str, str, str | None], tuple[float, str | None]] = (
            collections.OrderedDict()
        )
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str, str | None]) -> tuple[str | None] | None:
        """(the item's label then,) when `key` was sent within REMEMBER_S, else None."""
        with self._lock:
            found = self._seen.get(key)
            if found is None or time.monotonic() - found[0] > REMEMBER_S:
                return None
            return (found[1],)

    def add(self, key: tuple[str, str, str | None], label: str | None) -> None:
        with self._lock:
            self._seen.pop(key, None)
            self._seen[key] = (time.monotonic(), label)
            while len(self._seen) > MAX_REMEMBERED:
                self._seen.popitem(last=False)


def token_matches(given: str | None, expected: str | list[str]) -> bool:
    """Whether `given` is (one of) the expected token(s); constant time in each comparison."""
    if given is None:
        return False
    tokens = [expected] if isinstance(expected, str) else expected
    return any([hmac.compare_digest(given.encode(), token.encode()) for token in tokens])


def client_address(request: Request) -> str:
    """Who sent a request, by address: the peer (behind a reverse proxy, the address in its
    X-Forwarded-For, for the proxies FORWARDED_ALLOW_IPS names). An IPv6 client counts by its /64,
    the block one subscriber gets, so that it cannot pose as many clients."""
    host = request.client.host if request.client else "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if address.version == 6 and not address.ipv4_mapped:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address.ipv4_mapped or address) if address.version == 6 else str(address)


def client_identity(request: Request, token: str | None, settings: Settings) -> str:
    """The client a vote and a rate limit belong to: its FEEDBACK_TOKEN where tokens are set (a
    token is its holder's identity), else its address; hashed, as the inbox records it."""
    if token is not None and token_matches(token, settings.feedback_tokens):
        return voter_id("token", token)
    return voter_id("address", client_address(request))


@dataclass(frozen=True)
class Sent:
    """A feedback request as the service takes it (the image already decoded and checked)."""

    client: str
    data: bytes
    label: str | None


class FeedbackService:
    """The server's side of the inbox: found at first use (the store, else .state/inbox), then kept."""

    def __init__(self, settings: Settings, root: Path | None = None) -> None:
        self.settings = settings
        self.root = root
        self._inbox: Inbox | None = None
        self._open_lock = threading.Lock()
        self.feedback_limits = RateLimits(
            settings.feedback_client_max_per_hour, settings.feedback_max_per_hour, "feedback"
        )
        self.capture_limits = RateLimits(settings.capture_client_max_per_hour, settings.capture_max_per_hour, "capture")
        self.recent = RecentSends()
        self._pending: tuple[int, float] | None = None  # (count, when it was read)
        self._tasks: set[asyncio.Task] = set()

    def inbox(self) -> Inbox:
        """Blocking (it may probe the store): call it from a worker thread."""
        with self._open_lock:
            if self._inbox is None:
                inbox = open_inbox(self.root, self.settings.feedback_inbox, self.settings.feedback_min_agreeing)
                if not inbox.atomic_updates():
                    log.warning(
                        "the inbox's store ignores conditional writes: run one server process only, or votes "
                        "sent to different processes at once may overwrite each other (MinIO, SeaweedFS and "
                        "AWS S3 support them)"
                    )
                self._inbox = inbox
                log.info("feedback inbox: %s", inbox.where)
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

    def resent(self, client: str, data: bytes, label: str | None) -> tuple[str, str | None] | None:
        """(item id, its label) when `client` sent these bytes with this label recently and the inbox
        took them: an identical re-send, answered without budget or store access. Else None.
        Hashes the upload: call it from a worker thread."""
        sha = sha256_of(data)
        found = self.recent.get((client, sha, label))
        return None if found is None else (sha, found[0])

    def store(self, sent: Sent, *, limits: RateLimits, **fields: object) -> Submitted:
        """Store one item (blocking). Raises RateLimited, InboxFull or InboxUnavailable; nothing else.

        The client pays one event of `limits`, refunded when the inbox had it already.
        """
        limits.take(sent.client)
        try:
            inbox = self.inbox()
            self._check_room(inbox)
            done = inbox.add_vote(sent.data, label=sent.label, voter=sent.client, **fields)  # type: ignore[arg-type]
        except (InboxFull, InboxUnavailable):
            limits.give_back(sent.client)
            raise
        except GreenrError as err:
            limits.give_back(sent.client)
            raise InboxUnavailable(f"inbox unavailable: {err.what}", err.fix) from None
        except Exception as exc:  # the store's client failing in a way nobody foresaw: still no 500
            limits.give_back(sent.client)
            log.exception("storing feedback failed")
            raise InboxUnavailable(f"inbox unavailable: {type(exc).__name__}: {exc}", "see the server log") from None
        if done.status in ("unchanged", "accepted"):
            limits.give_back(sent.client)  # nothing new stored: a re-send (through another process) is free
        self.recent.add((sent.client, done.record.sha256, sent.label), done.record.label)
        if done.status == "new" and self._pending is not None:
            self._pending = (self._pending[0] + 1, self._pending[1])
        return done

    def capture_uncertain(self, client: str, data: bytes, predicted: str, confidence: float, model_sha256: str) -> None:
        """Keep a prediction below CAPTURE_BELOW_CONFIDENCE for review, in the background; never raises."""
        threshold = self.settings.capture_below_confidence
        if threshold is None or confidence >= threshold:
            return
        task = asyncio.get_running_loop().create_task(
            asyncio.to_thread(self._capture, Sent(client, data, None), predicted, confidence, model_sha256)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _capture(self, sent: Sent, predicted: str, confidence: float, model_sha256: str) -> None:
        if self.resent(sent.client, sent.data, None) is not None:
            return  # this client's photo was captured already
        try:
            done = self.store(
                sent,
                limits=self.capture_limits,
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
