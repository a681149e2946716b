"""The inbox: user feedback and uncertain inputs waiting to become the next data version.

Where: the DVC remote's object store (its endpoint, bucket and credentials) under the prefix
`inbox/`, beside DVC's own `dvc/`; a folder under `.state/inbox/` when no store answers. Each item
is content-addressed by the SHA-256 of its bytes, so the same photo sent twice is one item:

    pending/<sha256>.<ext>      the image, exactly as uploaded
    pending/<sha256>.json       its record (label, labels given, prediction, model, times); written
                                after the image, so a record always has its image
    review/<sha256>             empty marker: the item has no label yet (shown on /review)
    accepted/<sha256>.*         in a data version that `dvc push` has stored
    rejected/<sha256>.*         did not decode, or is already in the data with another label

`accept` copies labeled items into `data/<label>/` (collision-free names), runs `dvc add data` and
`dvc push`, and only then moves the items to `accepted/`: a failure at any step leaves every item in
the inbox, and running it again completes the job.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import yaml

from greenr import scm
from greenr.atomic import write_bytes
from greenr.data.images import IMAGE_SUFFIXES, ImageError, decode_image
from greenr.errors import GreenrError
from greenr.paths import DATA_DIR, DATA_DVC, INBOX_PREFIX, repo_root, state_dir

log = logging.getLogger(__name__)

PENDING, REVIEW, ACCEPTED, REJECTED = "pending", "review", "accepted", "rejected"
SUFFIX_OF_FORMAT = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp"}
SOURCES = ("feedback", "uncertain")


class InboxUnavailable(GreenrError):
    """The inbox's store cannot be reached or refuses us (the server answers 503)."""


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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


@dataclass
class Record:
    sha256: str
    suffix: str
    source: str  # "feedback" (a user said what it is) or "uncertain" (captured below the confidence threshold)
    received: str
    label: str | None = None  # what `accept` files it under; None: waits for review
    labels_given: list[str] = field(default_factory=list)  # every label users sent; 2+ = conflict, needs review
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
            return cls(**{k: v for k, v in data.items() if k in known})
        except (ValueError, TypeError) as exc:
            raise GreenrError(f"inbox record {where} is not valid: {exc}", "delete it; its image stays") from None

    def dumps(self) -> bytes:
        return (json.dumps(asdict(self), indent=2, sort_keys=True) + "\n").encode()

    @property
    def image_key(self) -> str:
        return f"{PENDING}/{self.sha256}{self.suffix}"


# ---------------------------------------------------------------------------- where items are kept


class Backend(Protocol):
    where: str

    def put(self, key: str, data: bytes) -> None: ...
    def get(self, key: str) -> bytes | None: ...
    def copy(self, src: str, dst: str) -> None: ...
    def delete(self, key: str) -> None: ...
    def list(self, prefix: str) -> list[str]: ...


class LocalBackend:
    """A folder (`.state/inbox/` by default): atomic writes, keys are relative paths."""

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


class S3Backend:
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
        from botocore.exceptions import ClientError

        with self._errors():
            try:
                return self.client.get_object(Bucket=self.remote.bucket, Key=f"{self.root}/{key}")["Body"].read()
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise

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
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        # One writer per item at a time within a process (the server's threads).
        self._lock = threading.Lock()

    @property
    def where(self) -> str:
        return self.backend.where

    def record(self, sha: str, state: str = PENDING) -> Record | None:
        raw = self.backend.get(f"{state}/{sha}.json")
        return None if raw is None else Record.parse(raw, f"{self.where}/{state}/{sha}.json")

    def records(self, state: str = PENDING) -> list[Record]:
        out = []
        for key in self.backend.list(state):
            if key.endswith(".json"):
                raw = self.backend.get(key)
                if raw is not None:
                    out.append(Record.parse(raw, f"{self.where}/{key}"))
        return out

    def count(self, state: str = PENDING) -> int:
        return sum(key.endswith(".json") for key in self.backend.list(state))

    def image(self, record: Record) -> bytes | None:
        return self.backend.get(record.image_key)

    def _save(self, record: Record) -> None:
        """Write the record (the marker for review first, or removed after: never a labeled item hidden)."""
        marker = f"{REVIEW}/{record.sha256}"
        if record.label is None:
            self.backend.put(marker, b"")
            self.backend.put(f"{PENDING}/{record.sha256}.json", record.dumps())
        else:
            self.backend.put(f"{PENDING}/{record.sha256}.json", record.dumps())
            self.backend.delete(marker)

    def submit(
        self,
        data: bytes,
        *,
        label: str | None,
        source: str = "feedback",
        predicted: str | None = None,
        confidence: float | None = None,
        model_sha256: str | None = None,
        suffix: str | None = None,
    ) -> Submitted:
        """Store an image (unlabeled when `label` is None); the same bytes again update one item."""
        sha = sha256_of(data)
        with self._lock:
            done = self.record(sha, ACCEPTED)
            if done is not None:
                return Submitted(done, "accepted")
            record = self.record(sha)
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
                self._apply_label(record, label)
                self.backend.put(record.image_key, data)
                self._save(record)
                return Submitted(record, "new")
            before = record.dumps()
            self._apply_label(record, label)
            if record.dumps() == before:
                return Submitted(record, "unchanged")
            record.updated = now()
            self._save(record)
            return Submitted(record, "updated")

    @staticmethod
    def _apply_label(record: Record, label: str | None) -> None:
        if label is None or record.reviewed or label in record.labels_given:
            return
        record.labels_given = sorted({*record.labels_given, label})
        # Users who disagree about a photo leave it to a reviewer.
        record.label = record.labels_given[0] if len(record.labels_given) == 1 else None

    def set_label(self, sha_or_prefix: str, label: str) -> Record:
        """A reviewer's label: final for this item (later feedback does not change it)."""
        with self._lock:
            record = self.find(sha_or_prefix)
            record.label, record.reviewed, record.updated = label, True, now()
            self._save(record)
            return record

    def find(self, sha_or_prefix: str) -> Record:
        prefix = sha_or_prefix.strip().lower()
        if len(prefix) < 6 or any(c not in "0123456789abcdef" for c in prefix):
            raise GreenrError(
                f"{sha_or_prefix!r} is not an item id", "give the item's SHA-256 (or its first 6+ hex digits)"
            )
        start = len(PENDING) + 1
        matches = [k for k in self.backend.list(PENDING) if k.endswith(".json") and k[start:].startswith(prefix)]
        if not matches:
            raise GreenrError(
                f"no pending inbox item {sha_or_prefix} in {self.where}", "`greenr inbox status --items` lists them"
            )
        if len(matches) > 1:
            raise GreenrError(f"{sha_or_prefix} matches {len(matches)} items", "give more digits of the SHA-256")
        found = self.record(matches[0][start : -len(".json")])
        if found is None:
            raise GreenrError(f"inbox item {sha_or_prefix} disappeared", "someone accepted it meanwhile; check status")
        return found

    def to_review(self, limit: int = 100) -> list[Record]:
        """Items without a label, oldest first (the markers say which; stale markers are dropped)."""
        out = []
        for key in self.backend.list(REVIEW):
            sha = key[len(REVIEW) + 1 :]
            record = self.record(sha)
            if record is None or record.label is not None:
                self.backend.delete(key)
                continue
            out.append(record)
        return sorted(out, key=lambda r: r.received)[:limit]

    def move(self, record: Record, state: str, outcome: dict[str, Any]) -> None:
        """pending -> accepted/rejected: copy image and record first, delete the pending ones last."""
        record.outcome = {**outcome, "at": now()}
        if self.backend.get(record.image_key) is not None:
            self.backend.copy(record.image_key, f"{state}/{record.sha256}{record.suffix}")
        self.backend.put(f"{state}/{record.sha256}.json", record.dumps())
        self.drop_pending(record)

    def drop_pending(self, record: Record) -> None:
        """Delete an item's pending files, its record last (until then it is still pending)."""
        self.backend.delete(f"{REVIEW}/{record.sha256}")
        self.backend.delete(record.image_key)
        self.backend.delete(f"{PENDING}/{record.sha256}.json")

    def status(self) -> dict[str, Any]:
        pending = self.records()
        labeled = [r for r in pending if r.label is not None]
        labels = sorted({r.label for r in labeled if r.label is not None})
        keys = self.backend.list(PENDING)
        with_record = {r.sha256 for r in pending}
        return {
            "where": self.where,
            "pending": len(pending),
            "labeled": {label: sum(r.label == label for r in labeled) for label in labels},
            "to_review": len(pending) - len(labeled),
            "conflicts": sum(len(r.labels_given) > 1 and not r.reviewed for r in pending),
            "uncertain": sum(r.source == "uncertain" for r in pending),
            # Images without a record: a submit in flight, or one interrupted before its record (harmless).
            "orphans": sum(not k.endswith(".json") and Path(k).stem not in with_record for k in keys),
            "accepted": self.count(ACCEPTED),
            "rejected": self.count(REJECTED),
        }


# ---------------------------------------------------------------------------- which inbox


def local_inbox() -> Inbox:
    return Inbox(LocalBackend(state_dir() / INBOX_PREFIX))


def store_inbox(root: Path | None = None) -> Inbox | None:
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
    return Inbox(S3Backend(remote))


def open_inbox(root: Path | None = None, where: str = "auto") -> Inbox:
    """`auto`: the store if it answers, else the local folder; `store`: the store or an error; `local`."""
    if where == "local":
        return local_inbox()
    inbox = store_inbox(root)
    if inbox is not None:
        return inbox
    if where == "store":
        raise InboxUnavailable(
            "inbox unavailable: the DVC remote's object store is not answering",
            "start it (`greenr store start`), or set FEEDBACK_INBOX=auto to fall back to .state/inbox",
        )
    log.warning("no object store answers: the inbox is the local folder %s", state_dir() / INBOX_PREFIX)
    return local_inbox()


def all_inboxes(root: Path | None = None) -> list[Inbox]:
    """Every place items may wait: the store's inbox (if it answers) and the local folder (if used)."""
    found = []
    store = store_inbox(root)
    if store is not None:
        found.append(store)
    local = local_inbox()
    if store is None or local.backend.list(PENDING):
        found.append(local)
    return found


# ---------------------------------------------------------------------------- accept


@dataclass
class AcceptReport:
    added: list[str] = field(default_factory=list)  # data paths written
    already_in_data: list[str] = field(default_factory=list)  # same bytes were there already
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (sha256, reason)
    waiting: int = 0  # pending items without a label
    version_before: str | None = None
    version_after: str | None = None
    files_after: int | None = None

    @property
    def accepted(self) -> int:
        return len(self.added) + len(self.already_in_data)

    def summary(self) -> str:
        if not self.accepted and not self.rejected:
            return f"nothing to accept ({self.waiting} item(s) wait for a label: `greenr inbox status --items`)"
        lines = [
            f"accepted {self.accepted} item(s): {len(self.added)} new image(s) in {DATA_DIR}/, "
            f"{len(self.already_in_data)} already there; {len(self.rejected)} rejected; "
            f"{self.waiting} wait for a label"
        ]
        lines += [f"  rejected {sha[:12]}: {reason}" for sha, reason in self.rejected]
        if self.version_after:
            changed = "unchanged" if self.version_after == self.version_before else f"was {self.version_before}"
            lines.append(
                f"data version {self.version_after} ({self.files_after} files; {changed}), pushed to the DVC remote"
            )
            if self.version_after != self.version_before:
                lines.append(f"next: `dvc repro`, then commit it: `git add {DATA_DVC} dvc.lock splits && git commit`")
        return "\n".join(lines)


def data_version(root: Path) -> tuple[str | None, int | None]:
    """(md5 of the data directory, file count) as data.dvc records them."""
    try:
        outs = (yaml.safe_load((root / DATA_DVC).read_text()) or {}).get("outs") or [{}]
    except FileNotFoundError:
        return None, None
    return outs[0].get("md5"), outs[0].get("nfiles")


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


def accept(inboxes: Sequence[Inbox], classes: Sequence[str], root: Path | None = None) -> AcceptReport:
    """Labeled items -> data/<label>/, `dvc add data`, `dvc push`, then the items -> accepted/."""
    root = root or repo_root()
    data_dir = root / DATA_DIR
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
            if record.label is None:
                report.waiting += 1
                continue
            if inbox.record(record.sha256, ACCEPTED) is not None:
                # An earlier run pushed it and was interrupted while moving it: finish the move.
                inbox.drop_pending(record)
                continue
            reason = _reject_reason(record, classes)
            existing = index.get(record.sha256)
            data = None
            if reason is None and existing is None:
                data = inbox.image(record)
                reason = _check_image(record, data)
            if reason is None and existing is not None and existing.parent.name != record.label:
                reason = f"already in the data as {existing.relative_to(root)} (relabel that file by hand if wrong)"
            if reason is not None:
                report.rejected.append((record.sha256, reason))
                inbox.move(record, REJECTED, {"reason": reason})
                continue
            if existing is not None:
                report.already_in_data.append(existing.relative_to(root).as_posix())
                done.append((inbox, record, existing.relative_to(root).as_posix()))
                continue
            assert data is not None
            target = _free_name(data_dir / str(record.label), record.sha256, record.suffix, data)
            if not target.exists():
                write_bytes(target, data)
            index[record.sha256] = target
            report.added.append(target.relative_to(root).as_posix())
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


def _reject_reason(record: Record, classes: Sequence[str]) -> str | None:
    if record.label is None or record.label not in classes:
        return f"label {record.label!r} is not a class ({', '.join(classes)})"
    if record.suffix not in IMAGE_SUFFIXES:
        return f"suffix {record.suffix!r} is not an image suffix"
    return None


def _check_image(record: Record, data: bytes | None) -> str | None:
    if data is None:
        return "its image is missing from the inbox"
    if sha256_of(data) != record.sha256:
        return "its image does not match its SHA-256 (damaged in the store)"
    try:
        decode_image(data)
    except ImageError as err:
        return f"its image does not decode: {err.reason}"
    return None
