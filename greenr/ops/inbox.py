"""The inbox: user feedback and uncertain inputs waiting to become the next data version.

Where: the DVC remote's object store (its endpoint, bucket and credentials) under the prefix
`inbox/`, beside DVC's own `dvc/`; a folder under `.state/inbox/` when no store answers. Each item
is content-addressed by the SHA-256 of its bytes, so the same photo sent twice is one item:

    pending/<sha256>.<ext>      the image, exactly as uploaded
    pending/<sha256>.json       its record (votes, label, prediction, model, times); written after
                                the image, so a record always has its image
    review/<sha256>             empty marker: the item needs a reviewer (shown on /review): no label,
                                conflicting votes, or fewer agreeing votes than the trust policy asks
    accepted/<sha256>.*         in a data version that `dvc push` has stored
    rejected/<sha256>.*         did not decode, or is already in the data with another label

Records change by compare-and-swap: read the record with its ETag, change it, write it back only
if the ETag still matches (S3 `If-Match`, or `If-None-Match: *` for a new one; in the local folder
the same check under a file lock), else read again and retry. So any number of server processes
on one store can take votes for one photo at once without losing any; checked on SeaweedFS 4.48,
and MinIO and AWS S3 support the same conditional writes.

Votes are attributed (`Record.votes`: label -> voter ids), so one client's repeats count once. The
trust policy (`TrustPolicy`) decides what `accept` may take: a reviewer's label, or at least
`min_agreeing` voters agreeing with none disagreeing (one is enough with `trust_feedback`).

`accept` copies the items the policy trusts into `data/<label>/` (collision-free names), runs `dvc
add data` and `dvc push`, and only then moves the items to `accepted/`: a failure at any step leaves
every item in the inbox, and running it again completes the job.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import io
import json
import logging
import random
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from greenr import scm
from greenr.atomic import write_bytes
from greenr.data.dataset import class_folders, data_version
from greenr.data.images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, ImageError, decode_image
from greenr.errors import GreenrError
from greenr.paths import DATA_DIR, DATA_DVC, INBOX_PREFIX, repo_root, state_dir

log = logging.getLogger(__name__)

PENDING, REVIEW, ACCEPTED, REJECTED = "pending", "review", "accepted", "rejected"
SUFFIX_OF_FORMAT = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp"}
SOURCES = ("feedback", "uncertain")
# Independent agreeing votes that make a label trusted without a reviewer (FEEDBACK_MIN_AGREEING).
DEFAULT_MIN_AGREEING = 3
# The server's upload limit per file (MAX_UPLOAD_BYTES); `accept` applies the same one.
DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
# The voter of labels recorded before votes were attributed: all of them count as one voter.
UNATTRIBUTED = "unattributed"
# Compare-and-swap tries per update: each lost race means another writer's update went in.
MAX_ATTEMPTS = 50
MIN_ID_DIGITS = 6
# A class folder `accept --new-class` may create: no path separators, no hidden or parent folders.
CLASS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
# Skipped items listed one per line in the summary (the rest: `greenr inbox status --items`).
LISTED_SKIPS = 20


class InboxUnavailable(GreenrError):
    """The inbox's store cannot be reached or refuses us (the server answers 503)."""


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def voter_id(kind: str, value: str) -> str:
    """How a voter is recorded: `token:<hash>` or `address:<hash>`, never the token or address itself."""
    return f"{kind}:{hashlib.sha256(f'greenr-voter:{value}'.encode()).hexdigest()[:16]}"


def image_suffix(data: bytes) -> str:
    """The file suffix for the image's real format (not the client's file name)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format or ""
    except Exception:
        raise ImageError("not a recognised image") from None
    if fmt not in SUFFIX_OF_FORMAT:
        raise ImageError(f"unsupported image format {fmt}; use JPEG, PNG or WebP", "unsupported")
    return SUFFIX_OF_FORMAT[fmt]


def item_prefix(text: str) -> str:
    """An item id as given (its SHA-256 or its first 6+ hex digits), lower-cased; GreenrError if it cannot be one."""
    prefix = text.strip().lower()
    if any(c not in "0123456789abcdef" for c in prefix) or len(prefix) > 64:
        raise GreenrError(f"{text[:80]!r} is not an item id", "give the item's SHA-256 (or its first 6+ hex digits)")
    if len(prefix) < MIN_ID_DIGITS:
        raise GreenrError(
            f"item id {text!r} is too short: give {MIN_ID_DIGITS} or more digits",
            "`greenr inbox status --items` lists the ids",
        )
    return prefix


@dataclass
class Record:
    sha256: str
    suffix: str
    source: str  # "feedback" (a user said what it is) or "uncertain" (captured below the confidence threshold)
    received: str
    label: str | None = None  # the label every vote agrees on, or a reviewer's; None: none yet, or conflicting
    labels_given: list[str] = field(default_factory=list)  # every label voted for; 2+ = conflict, needs review
    votes: dict[str, list[str]] = field(default_factory=dict)  # label -> voter ids (each voter counted once)
    reviewed: bool = False  # a reviewer set the label; later feedback does not change it
    predicted: str | None = None
    confidence: float | None = None
    model_sha256: str | None = None
    updated: str | None = None
    outcome: dict[str, Any] | None = None  # set when it leaves pending/: accepted (path, data version) or rejected

    @classmethod
    def parse(cls, raw: bytes, where: str) -> Record:
        try:
            data = json.loads(raw)
            known = {f.name for f in fields(cls)}
            record = cls(**{k: v for k, v in data.items() if k in known})
        except (ValueError, TypeError) as exc:
            raise GreenrError(f"inbox record {where} is not valid: {exc}", "delete it; its image stays") from None
        if "votes" not in data:  # written before votes were attributed: one unknown voter per label
            record.votes = {label: [UNATTRIBUTED] for label in record.labels_given}
        return record

    def dumps(self) -> bytes:
        return (json.dumps(asdict(self), indent=2, sort_keys=True) + "\n").encode()

    @property
    def image_key(self) -> str:
        return f"{PENDING}/{self.sha256}{self.suffix}"

    def vote(self, label: str | None, voter: str) -> bool:
        """Count `voter`'s vote for `label` (once per voter and label); False when nothing changed."""
        if label is None or self.reviewed or voter in self.votes.get(label, []):
            return False
        self.votes[label] = sorted({*self.votes.get(label, []), voter})
        self.labels_given = sorted(self.votes)
        # Voters who disagree about a photo leave it to a reviewer.
        self.label = self.labels_given[0] if len(self.labels_given) == 1 else None
        return True

    def vote_counts(self) -> dict[str, int]:
        return {label: len(voters) for label, voters in sorted(self.votes.items())}


# ---------------------------------------------------------------------------- the trust policy


@dataclass(frozen=True)
class Verdict:
    label: str | None  # what `accept` may file the item under; None: it stays in the inbox
    kind: str  # reviewed, agreed, trusted | unlabeled, conflict, few_votes
    reason: str


@dataclass(frozen=True)
class TrustPolicy:
    """Which labels may become training data: a reviewer's, or `min_agreeing` independent voters who
    agree with none disagreeing; `trust_feedback` takes a single vote (the old behaviour)."""

    min_agreeing: int = DEFAULT_MIN_AGREEING
    trust_feedback: bool = False

    def __post_init__(self) -> None:
        if self.min_agreeing < 1:
            raise GreenrError(
                f"the minimum of agreeing votes must be at least 1, not {self.min_agreeing}",
                "set FEEDBACK_MIN_AGREEING (or --min-agreeing) to 1 or more",
            )

    @property
    def needed(self) -> int:
        return 1 if self.trust_feedback else self.min_agreeing

    def verdict(self, record: Record) -> Verdict:
        if record.reviewed and record.label is not None:
            return Verdict(record.label, "reviewed", "a reviewer's label")
        counts = record.vote_counts()
        if not counts:
            return Verdict(None, "unlabeled", "no label yet: a reviewer gives it one (/review or `greenr inbox label`)")
        if len(counts) > 1:
            given = ", ".join(f"{label} {n}" for label, n in counts.items())
            return Verdict(None, "conflict", f"conflicting votes ({given}): a reviewer decides")
        ((label, n),) = counts.items()
        if n < self.needed:
            return Verdict(
                None,
                "few_votes",
                f"{n} vote(s) for {label}, {self.needed} agreeing needed: a reviewer's label, more votes, "
                "or `--trust-feedback`",
            )
        if self.trust_feedback and n < self.min_agreeing:
            return Verdict(label, "trusted", f"{n} vote(s) for {label}, taken with --trust-feedback")
        return Verdict(label, "agreed", f"{n} agreeing votes for {label}")

    def needs_review(self, record: Record) -> bool:
        return self.verdict(record).label is None


# ---------------------------------------------------------------------------- where items are kept


class ItemStore(Protocol):
    where: str

    def put(self, key: str, data: bytes) -> None: ...
    def get(self, key: str) -> bytes | None: ...
    def get_versioned(self, key: str) -> tuple[bytes, str] | None:
        """The object and its version tag (ETag); None when there is none."""
        ...

    def put_if(self, key: str, data: bytes, version: str | None) -> bool:
        """Write only if the object is still at `version` (None: only if it does not exist); False if not."""
        ...

    def copy(self, src: str, dst: str) -> None: ...
    def delete(self, key: str) -> None: ...
    def list(self, prefix: str) -> list[str]: ...


class LocalItemStore:
    """A folder (`.state/inbox/` by default): atomic writes, keys are relative paths; conditional
    writes under a lock file, so several server processes on one machine can share it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.where = str(folder)

    def _path(self, key: str) -> Path:
        return self.folder / key

    def put(self, key: str, data: bytes) -> None:
        write_bytes(self._path(key), data)

    def get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def get_versioned(self, key: str) -> tuple[bytes, str] | None:
        data = self.get(key)  # writes are renames: a whole old file or a whole new one
        return None if data is None else (data, hashlib.md5(data).hexdigest())

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "a+b") as handle:  # hidden: never listed as an item
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes, also if the process dies
            yield

    def put_if(self, key: str, data: bytes, version: str | None) -> bool:
        with self._locked():
            current = self.get_versioned(key)
            if (current[1] if current else None) != version:
                return False
            self.put(key, data)
            return True

    def copy(self, src: str, dst: str) -> None:
        data = self.get(src)
        if data is None:
            raise GreenrError(f"{self.where}/{src} is missing", "run `greenr inbox status` to see what is left")
        self.put(dst, data)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list(self, prefix: str) -> list[str]:
        folder = self._path(prefix)
        if not folder.is_dir():
            return []
        return sorted(
            p.relative_to(self.folder).as_posix()
            for p in folder.rglob("*")
            if p.is_file() and not p.name.startswith(".")  # atomic writes' temporary files
        )


# The answers of a store that refused a conditional write (AWS uses 409 for a race between two).
PRECONDITION_FAILED = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")


class S3ItemStore:
    """The DVC remote's bucket under `inbox/`, with the remote's endpoint and credentials."""

    def __init__(self, remote: Any) -> None:
        from greenr.ops import objectstore

        self.remote = remote
        self.client = objectstore.s3_client(remote)
        self.root = INBOX_PREFIX
        self.where = f"s3://{remote.bucket}/{self.root} at {remote.endpoint}"

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        from greenr.ops import objectstore

        try:
            yield
        except (BotoCoreError, ClientError) as exc:
            # check_remote names the cause (down, credentials, bucket) and how to fix it.
            try:
                objectstore.check_remote(self.remote)
            except GreenrError as err:
                raise InboxUnavailable(f"inbox unavailable: {err.what}", err.fix) from None
            raise InboxUnavailable(
                f"inbox at {self.where} failed: {type(exc).__name__}: {exc}", "try again; see the store's logs"
            ) from None

    def put(self, key: str, data: bytes) -> None:
        with self._errors():
            self.client.put_object(Bucket=self.remote.bucket, Key=f"{self.root}/{key}", Body=data)

    def get(self, key: str) -> bytes | None:
        found = self.get_versioned(key)
        return None if found is None else found[0]

    def get_versioned(self, key: str) -> tuple[bytes, str] | None:
        from botocore.exceptions import ClientError

        with self._errors():
            try:
                answer = self.client.get_object(Bucket=self.remote.bucket, Key=f"{self.root}/{key}")
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise
            return answer["Body"].read(), answer["ETag"]

    def put_if(self, key: str, data: bytes, version: str | None) -> bool:
        from botocore.exceptions import ClientError

        condition = {"IfNoneMatch": "*"} if version is None else {"IfMatch": version}
        with self._errors():
            try:
                self.client.put_object(Bucket=self.remote.bucket, Key=f"{self.root}/{key}", Body=data, **condition)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in PRECONDITION_FAILED:
                    return False
                raise
            return True

    def copy(self, src: str, dst: str) -> None:
        with self._errors():
            self.client.copy_object(
                Bucket=self.remote.bucket,
                Key=f"{self.root}/{dst}",
                CopySource={"Bucket": self.remote.bucket, "Key": f"{self.root}/{src}"},
            )

    def delete(self, key: str) -> None:
        with self._errors():
            self.client.delete_object(Bucket=self.remote.bucket, Key=f"{self.root}/{key}")

    def list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        with self._errors():
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.remote.bucket, Prefix=f"{self.root}/{prefix}/"
            )
            for page in pages:
                keys += [obj["Key"][len(self.root) + 1 :] for obj in page.get("Contents", [])]
        return sorted(keys)


# ---------------------------------------------------------------------------- the inbox


@dataclass(frozen=True)
class Submitted:
    record: Record
    status: str  # "new", "updated", "unchanged" or "accepted" (already in a data version)


class Inbox:
    def __init__(self, store: ItemStore, min_agreeing: int = DEFAULT_MIN_AGREEING) -> None:
        self.store = store
        # What the review markers follow: an item needs a reviewer unless the strict policy trusts it.
        self.review_policy = TrustPolicy(min_agreeing)
        # Writers of one item in this process queue here rather than race through the store (fewer
        # retries; and no lost update even on a store that ignores conditional writes).
        self._locks = [threading.Lock() for _ in range(64)]

    @property
    def where(self) -> str:
        return self.store.where

    def record(self, sha: str, state: str = PENDING) -> Record | None:
        raw = self.store.get(f"{state}/{sha}.json")
        return None if raw is None else Record.parse(raw, f"{self.where}/{state}/{sha}.json")

    def records(self, state: str = PENDING) -> list[Record]:
        out = []
        for key in self.store.list(state):
            if key.endswith(".json"):
                raw = self.store.get(key)
                if raw is not None:
                    out.append(Record.parse(raw, f"{self.where}/{key}"))
        return out

    def count(self, state: str = PENDING) -> int:
        return sum(key.endswith(".json") for key in self.store.list(state))

    def image(self, record: Record) -> bytes | None:
        return self.store.get(record.image_key)

    def atomic_updates(self) -> bool:
        """Does the store refuse a conditional write whose condition fails? (Else concurrent
        updates from several processes could overwrite each other; one process stays safe.)"""
        probe = f".conditional-write-probe-{uuid.uuid4().hex}"  # one per process: two may start at once
        self.store.put(probe, b"probe")
        try:
            return not self.store.put_if(probe, b"probe again", None)
        finally:
            self.store.delete(probe)

    def _change(self, sha: str, change: Callable[[Record | None], Record | None]) -> tuple[Record | None, bool]:
        """Apply `change` to the item's record by compare-and-swap, retried while other writers win.

        `change` gets a copy of the current record (None: no item yet) and returns the record to
        write, or None to write nothing. Returns (the record now, whether this call wrote it).
        """
        key = f"{PENDING}/{sha}.json"
        with self._locks[int(sha[:2], 16) % len(self._locks)]:
            for attempt in range(MAX_ATTEMPTS):
                found = self.store.get_versioned(key)
                current = None if found is None else Record.parse(found[0], f"{self.where}/{key}")
                updated = change(copy.deepcopy(current))
                if updated is None:
                    return current, False
                if self.review_policy.needs_review(updated):
                    # Before the record: a record that needs review never goes unlisted.
                    self.store.put(f"{REVIEW}/{sha}", b"")
                if self.store.put_if(key, updated.dumps(), None if found is None else found[1]):
                    self._sync_marker(sha, updated)
                    return updated, True
                time.sleep(random.uniform(0, min(0.2, 0.002 * 2**attempt)))  # another writer won: read again
        raise InboxUnavailable(
            f"inbox item {sha[:12]} changed {MAX_ATTEMPTS} times while this update was being written",
            "send it again",
        )

    def _sync_marker(self, sha: str, record: Record | None) -> Record | None:
        """Make the review marker follow `record` (just read or written); the record that needs
        review (None: none does).

        A marker is deleted only to be looked at again: a writer that made the item need review
        after `record` was read put its marker first and its record second, so the second look
        sees that record and puts the marker back. So an item that needs review is never unlisted
        (a stale marker is harmless: /review drops it).
        """
        marker = f"{REVIEW}/{sha}"
        if record is not None and self.review_policy.needs_review(record):
            self.store.put(marker, b"")
            return record
        self.store.delete(marker)
        again = self.record(sha)
        if again is not None and self.review_policy.needs_review(again):
            self.store.put(marker, b"")
            return again
        return None

    def add_vote(
        self,
        data: bytes,
        *,
        label: str | None,
        voter: str = UNATTRIBUTED,
        source: str = "feedback",
        predicted: str | None = None,
        confidence: float | None = None,
        model_sha256: str | None = None,
        suffix: str | None = None,
    ) -> Submitted:
        """Store an image (unlabeled when `label` is None) with `voter`'s vote; the same bytes again
        update one item, and the same voter's same label again changes nothing."""
        sha = sha256_of(data)
        done = self.record(sha, ACCEPTED)
        if done is not None:
            return Submitted(done, "accepted")

        def change(record: Record | None) -> Record | None:
            if record is None:
                record = Record(
                    sha256=sha,
                    suffix=suffix or image_suffix(data),
                    source=source,
                    received=now(),
                    predicted=predicted,
                    confidence=confidence,
                    model_sha256=model_sha256,
                )
                record.vote(label, voter)
                self.store.put(record.image_key, data)  # before its record; the same bytes whoever writes
                return record
            if not record.vote(label, voter):
                return None
            record.updated = now()
            return record

        record, wrote = self._change(sha, change)
        assert record is not None
        if not wrote:
            return Submitted(record, "unchanged")
        # Only the writer that created the item leaves `updated` unset (one that lost the race to
        # create it read the winner's record and added its vote: an update).
        return Submitted(record, "updated" if record.updated else "new")

    def set_label(self, sha_or_prefix: str, label: str) -> Record:
        """A reviewer's label: final for this item (later feedback does not change it)."""
        sha = self.find(sha_or_prefix).sha256

        def change(record: Record | None) -> Record:
            if record is None:
                raise GreenrError(f"inbox item {sha[:12]} disappeared", "someone accepted it meanwhile; check status")
            record.label, record.reviewed, record.updated = label, True, now()
            return record

        record, _ = self._change(sha, change)
        assert record is not None
        return record

    def find(self, sha_or_prefix: str) -> Record:
        prefix = item_prefix(sha_or_prefix)
        start = len(PENDING) + 1
        matches = [k for k in self.store.list(PENDING) if k.endswith(".json") and k[start:].startswith(prefix)]
        if not matches:
            raise GreenrError(
                f"no pending inbox item {prefix} in {self.where}", "`greenr inbox status --items` lists them"
            )
        if len(matches) > 1:
            raise GreenrError(f"{prefix} matches {len(matches)} items", "give more digits of the SHA-256")
        found = self.record(matches[0][start : -len(".json")])
        if found is None:
            raise GreenrError(f"inbox item {prefix} disappeared", "someone accepted it meanwhile; check status")
        return found

    def to_review(self, limit: int = 100) -> list[Record]:
        """Items that need a reviewer, oldest first (the markers say which; stale markers are dropped)."""
        out = []
        for key in self.store.list(REVIEW):
            sha = key[len(REVIEW) + 1 :]
            record = self.record(sha)
            if record is None or not self.review_policy.needs_review(record):
                record = self._sync_marker(sha, record)  # drops the stale marker, unless it changed meanwhile
            if record is not None:
                out.append(record)
        return sorted(out, key=lambda r: r.received)[:limit]

    def move(self, record: Record, state: str, outcome: dict[str, Any]) -> None:
        """pending -> accepted/rejected: copy image and record first, delete the pending ones last."""
        record.outcome = {**outcome, "at": now()}
        if self.store.get(record.image_key) is not None:
            self.store.copy(record.image_key, f"{state}/{record.sha256}{record.suffix}")
        self.store.put(f"{state}/{record.sha256}.json", record.dumps())
        self.drop_pending(record)

    def drop_pending(self, record: Record) -> None:
        """Delete an item's pending files, its record last (until then it is still pending)."""
        self.store.delete(f"{REVIEW}/{record.sha256}")
        self.store.delete(record.image_key)
        self.store.delete(f"{PENDING}/{record.sha256}.json")

    def status(self, policy: TrustPolicy | None = None) -> dict[str, Any]:
        """Counts of what waits; `acceptable`: the items `accept` with `policy` would take."""
        policy = policy or self.review_policy
        pending = self.records()
        labeled = [r for r in pending if r.label is not None]
        labels = sorted({r.label for r in labeled if r.label is not None})
        keys = self.store.list(PENDING)
        with_record = {r.sha256 for r in pending}
        return {
            "where": self.where,
            "pending": len(pending),
            "labeled": {label: sum(r.label == label for r in labeled) for label in labels},
            "acceptable": sum(policy.verdict(r).label is not None for r in pending),
            "to_review": sum(self.review_policy.needs_review(r) for r in pending),
            "conflicts": sum(len(r.labels_given) > 1 and not r.reviewed for r in pending),
            "uncertain": sum(r.source == "uncertain" for r in pending),
            # Images without a record: an add_vote in flight, or one interrupted before its record (harmless).
            "orphans": sum(not k.endswith(".json") and Path(k).stem not in with_record for k in keys),
            "accepted": self.count(ACCEPTED),
            "rejected": self.count(REJECTED),
        }


# ---------------------------------------------------------------------------- which inbox


def local_inbox(min_agreeing: int = DEFAULT_MIN_AGREEING) -> Inbox:
    return Inbox(LocalItemStore(state_dir() / INBOX_PREFIX), min_agreeing)


def store_inbox(root: Path | None = None, min_agreeing: int = DEFAULT_MIN_AGREEING) -> Inbox | None:
    """The inbox in the DVC remote's store; None when no remote is set up or nothing answers there.

    A store that answers but refuses (credentials, missing bucket) is an error, not a fallback.
    """
    from greenr.ops import objectstore

    try:
        remote = objectstore.read_remote(root)
    except GreenrError as err:
        log.info("no object store for the inbox (%s)", err.what)
        return None
    if not objectstore.endpoint_answers(remote.endpoint):
        return None
    try:
        objectstore.check_remote(remote)
    except GreenrError as err:
        raise InboxUnavailable(f"inbox unavailable: {err.what}", err.fix) from None
    return Inbox(S3ItemStore(remote), min_agreeing)


def open_inbox(root: Path | None = None, where: str = "auto", min_agreeing: int = DEFAULT_MIN_AGREEING) -> Inbox:
    """`auto`: the store if it answers, else the local folder; `store`: the store or an error; `local`."""
    if where == "local":
        return local_inbox(min_agreeing)
    inbox = store_inbox(root, min_agreeing)
    if inbox is not None:
        return inbox
    if where == "store":
        raise InboxUnavailable(
            "inbox unavailable: the DVC remote's object store is not answering",
            "start it (`greenr store start`), or set FEEDBACK_INBOX=auto to fall back to .state/inbox",
        )
    log.warning("no object store answers: the inbox is the local folder %s", state_dir() / INBOX_PREFIX)
    return local_inbox(min_agreeing)


def all_inboxes(root: Path | None = None, min_agreeing: int = DEFAULT_MIN_AGREEING) -> list[Inbox]:
    """Every place items may wait: the store's inbox (if it answers) and the local folder (if used)."""
    found = []
    store = store_inbox(root, min_agreeing)
    if store is not None:
        found.append(store)
    local = local_inbox(min_agreeing)
    if store is None or local.store.list(PENDING):
        found.append(local)
    return found


# ---------------------------------------------------------------------------- accept


@dataclass(frozen=True)
class ImageLimits:
    """What an accepted image may be: the server's limits for /predict (MAX_UPLOAD_BYTES, MAX_PIXELS)."""

    max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class Skipped:
    sha256: str
    kind: str  # a Verdict kind (unlabeled, conflict, few_votes), or not_a_class
    reason: str


SKIP_KINDS = {
    "unlabeled": "without a label",
    "conflict": "with conflicting votes",
    "few_votes": "with too few agreeing votes",
    "not_a_class": "labeled with no class of data/",
}


@dataclass
class AcceptReport:
    added: list[str] = field(default_factory=list)  # data paths written
    already_in_data: list[str] = field(default_factory=list)  # same bytes were there already
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (sha256, reason)
    skipped: list[Skipped] = field(default_factory=list)  # left in the inbox, and why
    sizes: list[tuple[int, int, int]] = field(default_factory=list)  # (width, height, bytes) of each added image
    version_before: str | None = None
    version_after: str | None = None
    files_after: int | None = None

    @property
    def accepted(self) -> int:
        return len(self.added) + len(self.already_in_data)

    def summary(self) -> str:
        if not self.accepted and not self.rejected:
            lines = ["nothing to accept"]
        else:
            lines = [
                f"accepted {self.accepted} item(s): {len(self.added)} new image(s) in {DATA_DIR}/, "
                f"{len(self.already_in_data)} already there; {len(self.rejected)} rejected; "
                f"{len(self.skipped)} skipped"
            ]
        if self.sizes:
            pixels = sorted(self.sizes, key=lambda s: s[0] * s[1])
            small, large = pixels[0], pixels[-1]
            lines.append(
                f"  new image sizes: {small[0]}x{small[1]} to {large[0]}x{large[1]} px, "
                f"{min(s[2] for s in self.sizes) / 1024:.1f} to {max(s[2] for s in self.sizes) / 1024:.1f} KiB"
            )
        lines += [f"  rejected {sha[:12]}: {reason}" for sha, reason in self.rejected]
        if self.skipped:
            kinds = Counter(s.kind for s in self.skipped)
            lines.append(
                f"skipped {len(self.skipped)} item(s), left in the inbox: "
                + ", ".join(f"{n} {SKIP_KINDS.get(kind, kind)}" for kind, n in sorted(kinds.items()))
            )
            lines += [f"  {s.sha256[:12]}: {s.reason}" for s in self.skipped[:LISTED_SKIPS]]
            if len(self.skipped) > LISTED_SKIPS:
                lines.append(f"  ... and {len(self.skipped) - LISTED_SKIPS} more (`greenr inbox status --items`)")
        if self.version_after:
            changed = "unchanged" if self.version_after == self.version_before else f"was {self.version_before}"
            lines.append(
                f"data version {self.version_after} ({self.files_after} files; {changed}), pushed to the DVC remote"
            )
            if self.version_after != self.version_before:
                lines.append(f"next: `dvc repro`, then commit it: `git add {DATA_DVC} dvc.lock splits && git commit`")
        return "\n".join(lines)


def data_classes(root: Path | None = None) -> list[str]:
    """The classes of the data: the sub-folders of data/ that hold images, as the split stage finds
    them (greenr.data.dataset.class_folders); none while data/ does not exist."""
    data_dir = (root or repo_root()) / DATA_DIR
    return class_folders(data_dir) if data_dir.is_dir() else []


def check_label(label: str, classes: Sequence[str], new_class: bool = False) -> str:
    """`label` if it is a class of data/ (or, with `new_class`, a name a new class folder may have)."""
    if label in classes:
        return label
    if not new_class:
        known = ", ".join(classes) if classes else f"none: {DATA_DIR}/ has no class folders yet"
        raise GreenrError(
            f"{label[:80]!r} is not a class of {DATA_DIR}/ (classes: {known})",
            "use one of them, or add it as a new class with --new-class"
            + ("" if classes else f" (or restore the data first: `greenr pull {DATA_DVC}`)"),
        )
    if not CLASS_NAME.fullmatch(label):
        raise GreenrError(
            f"{label[:80]!r} cannot be a class folder name",
            "use 1-64 letters, digits and . _ + - starting with a letter or digit",
        )
    return label


def _data_index(data_dir: Path) -> dict[str, Path]:
    """SHA-256 -> file of every image in data/."""
    index: dict[str, Path] = {}
    for path in sorted(data_dir.glob("*/*")):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            with open(path, "rb") as handle:
                index.setdefault(hashlib.file_digest(handle, "sha256").hexdigest(), path)
    return index


def _free_name(folder: Path, sha: str, suffix: str, data: bytes) -> Path:
    """`inbox-<sha[:16]><suffix>`; the full hash in the (theoretical) case of another file by that name."""
    for name in (f"inbox-{sha[:16]}{suffix}", f"inbox-{sha}{suffix}"):
        path = folder / name
        if not path.exists() or path.read_bytes() == data:
            return path
    raise GreenrError(f"{folder}/inbox-{sha}{suffix} exists with other content", "move that file away")


def accept(
    inboxes: Sequence[Inbox],
    root: Path | None = None,
    policy: TrustPolicy | None = None,
    new_classes: Sequence[str] = (),
    limits: ImageLimits | None = None,
) -> AcceptReport:
    """The items `policy` trusts -> data/<label>/, `dvc add data`, `dvc push`, then the items -> accepted/.

    A label must be a class folder of data/, or one of `new_classes` (its folder is created).
    Images must decode within `limits` (those of /predict); the rest stays in the inbox, reported.
    """
    root = root or repo_root()
    policy = policy or TrustPolicy()
    limits = limits or ImageLimits()
    data_dir = root / DATA_DIR
    classes = data_classes(root)
    allowed = {*classes, *(check_label(name, classes, new_class=True) for name in new_classes)}
    report = AcceptReport()
    report.version_before, files_before = data_version(root)
    index = _data_index(data_dir)
    if files_before and len(index) < files_before:
        # `dvc add` would record a data version without the missing images.
        raise GreenrError(
            f"{DATA_DIR}/ holds {len(index)} images but {DATA_DVC} records {files_before}",
            f"restore the current data version first (`greenr pull {DATA_DVC}`), then re-run `greenr inbox accept`",
        )
    done: list[tuple[Inbox, Record, str]] = []  # (inbox, record, data path) to move once pushed
    for inbox in inboxes:
        for record in inbox.records():
            verdict = policy.verdict(record)
            label = verdict.label
            if label is None:
                report.skipped.append(Skipped(record.sha256, verdict.kind, verdict.reason))
                continue
            if inbox.record(record.sha256, ACCEPTED) is not None:
                # An earlier run pushed it and was interrupted while moving it: finish the move.
                inbox.drop_pending(record)
                continue
            if label not in allowed:
                known = ", ".join(classes) or "none yet"
                why = (
                    f"label {label[:80]!r} is not a class of {DATA_DIR}/ ({known}): `--new-class {label[:80]}` adds it"
                )
                report.skipped.append(Skipped(record.sha256, "not_a_class", why))
                continue
            reason = _reject_reason(record)
            existing = index.get(record.sha256)
            data = None
            size = None
            if reason is None and existing is None:
                data = inbox.image(record)
                reason, size = _check_image(record, data, limits)
            if reason is None and existing is not None and existing.parent.name != label:
                reason = f"already in the data as {existing.relative_to(root)} (relabel that file by hand if wrong)"
            if reason is not None:
                report.rejected.append((record.sha256, reason))
                inbox.move(record, REJECTED, {"reason": reason})
                continue
            if existing is not None:
                report.already_in_data.append(existing.relative_to(root).as_posix())
                done.append((inbox, record, existing.relative_to(root).as_posix()))
                continue
            assert data is not None and size is not None
            target = _free_name(data_dir / label, record.sha256, record.suffix, data)
            if not target.exists():
                write_bytes(target, data)
            index[record.sha256] = target
            report.added.append(target.relative_to(root).as_posix())
            report.sizes.append((*size, len(data)))
            log.info(
                "adding %s (%s; %dx%d px, %d bytes) as %s", record.sha256[:12], verdict.reason, *size, len(data), target
            )
            done.append((inbox, record, target.relative_to(root).as_posix()))
    if not done:
        return report
    scm.dvc("add", DATA_DIR, cwd=root, capture=True, fix="fix the cause above and re-run `greenr inbox accept`")
    report.version_after, report.files_after = data_version(root)
    try:
        scm.dvc("push", DATA_DVC, cwd=root, capture=True, timeout=1800)
    except GreenrError as err:
        raise GreenrError(
            f"{err.what}{_store_problem(root)}",
            "nothing was lost: the images are in data/ and the items stay in the inbox; "
            "bring the object store back (`greenr store check`) and re-run `greenr inbox accept`",
        ) from None
    for moved, (inbox, record, path) in enumerate(done):
        try:
            inbox.move(record, ACCEPTED, {"path": path, "data_version": report.version_after})
        except GreenrError as err:
            raise GreenrError(
                f"{err.what}\n  (data version {report.version_after} is pushed; {moved} of {len(done)} items "
                "were marked accepted when this happened)",
                f"nothing was lost: {err.fix or 'bring the store back'}, then re-run `greenr inbox accept` to finish",
            ) from None
        log.info("accepted %s as %s", record.sha256[:12], path)
    return report


def _store_problem(root: Path) -> str:
    """Why the DVC remote's store failed, in the words of `greenr store check` ('' if it looks fine)."""
    from greenr.ops import objectstore

    try:
        objectstore.check_remote(objectstore.read_remote(root))
    except GreenrError as err:
        return f"\n  because {err.what}"
    return ""


def _reject_reason(record: Record) -> str | None:
    if record.suffix not in IMAGE_SUFFIXES:
        return f"suffix {record.suffix!r} is not an image suffix"
    return None


def _check_image(record: Record, data: bytes | None, limits: ImageLimits) -> tuple[str | None, tuple[int, int] | None]:
    """(why the image may not become data, or None; its (width, height) when it may)."""
    if data is None:
        return "its image is missing from the inbox", None
    if sha256_of(data) != record.sha256:
        return "its image does not match its SHA-256 (damaged in the store)", None
    if len(data) > limits.max_bytes:
        return f"its image is {len(data)} bytes, over the upload limit of {limits.max_bytes} (MAX_UPLOAD_BYTES)", None
    try:
        image = decode_image(data, limits.max_pixels)
    except ImageError as err:
        return f"its image does not decode within the limits of /predict: {err.reason}", None
    return None, image.size


# ---------------------------------------------------------------------------- `greenr inbox`


def accept_trusted(
    root: Path, policy: TrustPolicy, limits: ImageLimits, new_classes: Sequence[str] = ()
) -> AcceptReport:
    """`accept` over every inbox; like `greenr push`, the local object store is started for the
    duration if nothing answers."""
    from greenr.ops import objectstore

    with objectstore.store_available(root):
        return accept(all_inboxes(root, policy.min_agreeing), root, policy, new_classes=new_classes, limits=limits)


def label_item(
    root: Path, item: str, label: str, new_class: bool = False, min_agreeing: int = DEFAULT_MIN_AGREEING
) -> tuple[Record, Inbox]:
    """A reviewer's label for the pending item `item` (its SHA-256 or a prefix), in whichever inbox
    holds it; the record as labeled and that inbox."""
    label = check_label(label, data_classes(root), new_class=new_class)
    prefix = item_prefix(item)  # a malformed id is said so, not "no such item"
    for box in all_inboxes(root, min_agreeing):
        try:
            return box.set_label(prefix, label), box
        except InboxUnavailable:
            raise
        except GreenrError:  # not in this inbox: try the next
            continue
    raise GreenrError(f"no pending inbox item {prefix}", "`greenr inbox status --items` lists them")


@dataclass(frozen=True)
class Overview:
    """Every inbox with its status (Inbox.status) under one trust policy."""

    policy: TrustPolicy
    inboxes: list[Inbox]
    statuses: list[dict[str, Any]]

    def totals(self) -> dict[str, Any]:
        """The counts over all inboxes, then each inbox's status."""
        keys = ("acceptable", "to_review", "pending")
        totals = {key: sum(s[key] for s in self.statuses) for key in keys}
        labeled = sum(sum(s["labeled"].values()) for s in self.statuses)
        return {"labeled": labeled, **totals, "inboxes": self.statuses}


def overview(root: Path, policy: TrustPolicy) -> Overview:
    inboxes = all_inboxes(root, policy.min_agreeing)
    return Overview(policy, inboxes, [box.status(policy) for box in inboxes])
