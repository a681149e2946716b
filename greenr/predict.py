"""Batch scoring: `greenr predict PATH|s3://bucket/prefix --out predictions.csv`.

Every image under a folder (recursively) or an S3 prefix (through the DVC remote's endpoint and
credentials, greenr.ops.objectstore) is decoded exactly as the server decodes an upload and
classified by the same backend (greenr.backends.loading), in batches, while the next batch is
read and decoded in threads. One CSV row per image, written as each batch finishes:

    path, status, prediction, confidence, p_<class>..., error

`status` is `ok`, `bad_image` (not a usable image: the reason is in `error`) or `read_error`
(the file or object could not be read). A bad file never stops the run.

Resumable: rows already in `--out` are skipped (`read_error` rows are tried again), so an
interrupted run continues where it stopped. `--shard I/N` keeps the images whose key hashes to
I modulo N: N processes (a Kubernetes Indexed Job) score one prefix together without talking to
each other, and a file keeps its shard when others are added. `--out` may be an s3:// URL too:
the CSV is then written locally and uploaded every `SYNC_SECONDS` and at the end.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from greenr.atomic import atomic_open
from greenr.backends.base import Backend
from greenr.backends.loading import open_backend
from greenr.backends.model_file import pull_int8_file, pull_model_file
from greenr.data.images import IMAGE_SUFFIXES, ImageError, ModelInput, prepare
from greenr.errors import GreenrError
from greenr.hardware import available_cpus
from greenr.paths import ONNX_MODEL_PATH, repo_root

log = logging.getLogger(__name__)

OK, BAD_IMAGE, READ_ERROR = "ok", "bad_image", "read_error"
# Rows with these statuses are final; others are scored again by the next run.
FINAL = frozenset({OK, BAD_IMAGE})
SYNC_SECONDS = 30.0
READERS = 8  # threads reading files or S3 objects ahead


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """`I/N` with 0 <= I < N."""
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise GreenrError(f"--shard {text!r} is not I/N", "e.g. --shard 0/4 for the first of 4 shards") from None
        if not 0 <= index < count:
            raise GreenrError(f"--shard {text!r}: need 0 <= I < N", "shards are numbered 0 to N-1") from None
        return cls(index, count)

    def owns(self, key: str) -> bool:
        """Whether `key` belongs to this shard (a stable hash: the same on every machine and run)."""
        digest = hashlib.sha256(key.encode()).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index


ALL = Shard(0, 1)


def _is_image(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


class LocalSource:
    """Images in a folder (recursively, sorted) or a single image file; keys are paths."""

    def __init__(self, path: Path) -> None:
        if not path.exists():
            raise GreenrError(f"{path} does not exist", "give a folder of images, an image file, or s3://BUCKET/PREFIX")
        self.path = path

    def keys(self) -> list[str]:
        if self.path.is_file():
            return [str(self.path)]
        return sorted(str(p) for p in self.path.rglob("*") if p.is_file() and _is_image(p.name))

    def read(self, key: str) -> bytes:
        return Path(key).read_bytes()


class S3Source:
    """Objects under s3://bucket/prefix, through the DVC remote's endpoint and credentials."""

    def __init__(self, url: str, client: Any) -> None:
        parsed = urlparse(url)
        self.bucket, self.prefix, self.client = parsed.netloc, parsed.path.lstrip("/"), client

    def keys(self) -> list[str]:
        found = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
                found += [obj["Key"] for obj in page.get("Contents", []) if _is_image(obj["Key"])]
        except Exception as exc:
            raise GreenrError(
                f"cannot list s3://{self.bucket}/{self.prefix}: {type(exc).__name__}: {exc}",
                "check the bucket and prefix, and the store with `greenr store check`",
            ) from None
        return [f"s3://{self.bucket}/{key}" for key in sorted(found)]

    def read(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=urlparse(key).path.lstrip("/"))["Body"].read()


def s3_client() -> Any:
    """A boto3 client for the DVC remote's endpoint, with its credentials (greenr.ops.objectstore)."""
    from greenr.ops import objectstore

    return objectstore.s3_client(objectstore.read_remote(repo_root()))


def columns(classes: list[str]) -> list[str]:
    return ["path", "status", "prediction", "confidence", *(f"p_{name}" for name in classes), "error"]


def _existing_rows(path: Path, header: list[str]) -> list[dict[str, str]]:
    """Complete rows of an earlier run's CSV (a last line cut off by an interruption is dropped)."""
    if not path.is_file() or path.stat().st_size == 0:
        return []
    text = path.read_text(encoding="utf-8")
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]  # the row being written when the run stopped
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames != header:
        raise GreenrError(
            f"{path} has the columns {reader.fieldnames}, not {header} (another model's classes?)",
            "score into another --out file, or delete this one to start again",
        )
    return list(reader)


class Output:
    """The CSV being written: rows appended and flushed per batch; optionally mirrored to S3."""

    def __init__(self, target: str, header: list[str]) -> None:
        self.header = header
        self.target = target
        self._s3: tuple[Any, str, str] | None = None
        if target.startswith("s3://"):
            parsed = urlparse(target)
            self._s3 = (s3_client(), parsed.netloc, parsed.path.lstrip("/"))
            self._tmp = tempfile.TemporaryDirectory(prefix="greenr-predict-")
            self.path = Path(self._tmp.name) / "predictions.csv"
            self._download()
        else:
            self.path = Path(target)
        rows = _existing_rows(self.path, header)
        kept = [row for row in rows if row["status"] in FINAL]
        self.done = {row["path"] for row in kept}
        # Rewrite without the rows to retry (and any cut-off line), then append from there.
        with atomic_open(self.path, "w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=header, lineterminator="\n")
            writer.writeheader()
            writer.writerows(kept)
        self._handle = open(self.path, "a", encoding="utf-8", newline="")
        self._writer = csv.DictWriter(self._handle, fieldnames=header, lineterminator="\n")
        self._synced = time.monotonic()

    def _download(self) -> None:
        assert self._s3 is not None
        client, bucket, key = self._s3
        try:
            client.download_file(bucket, key, str(self.path))
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            if code not in ("404", "NoSuchKey", "NotFound"):  # absent is a first run; anything else is not
                raise GreenrError(
                    f"cannot read {self.target}: {exc}", "check the store: `greenr store check`"
                ) from None

    def write(self, rows: list[dict[str, Any]]) -> None:
        self._writer.writerows(rows)
        self._handle.flush()
        os.fsync(self._handle.fileno())
        if self._s3 and time.monotonic() - self._synced > SYNC_SECONDS:
            self.sync()

    def sync(self) -> None:
        if self._s3 is None:
            return
        client, bucket, key = self._s3
        client.upload_file(str(self.path), bucket, key)
        self._synced = time.monotonic()

    def close(self) -> None:
        self._handle.close()
        self.sync()
        if self._s3 is not None:
            self._tmp.cleanup()


@dataclass
class Summary:
    listed: int = 0  # images in this shard
    skipped: int = 0  # already in the output
    counts: dict[str, int] = field(default_factory=lambda: {OK: 0, BAD_IMAGE: 0, READ_ERROR: 0})
    seconds: float = 0.0  # reading, decoding, scoring and writing, model load excluded
    # The model alone on one full batch of this run's images (same backend, precision, threads,
    # batch size): the most images/s scoring could reach. 0: not measured.
    ceiling_per_s: float = 0.0
    backend: str = ""

    @property
    def per_s(self) -> float:
        done = sum(self.counts.values())
        return done / self.seconds if self.seconds else 0.0

    def line(self, out: str) -> str:
        c = self.counts
        text = (
            f"{self.listed} images in this shard: {self.skipped} already in {out}, {c[OK]} scored, "
            f"{c[BAD_IMAGE]} not usable images, {c[READ_ERROR]} unreadable (retried by the next run)"
        )
        if self.ceiling_per_s:
            text += (
                f"\n{self.per_s:.1f} images/s in {self.seconds:.1f} s; the model alone ({self.backend}) "
                f"{self.ceiling_per_s:.1f} images/s: {self.per_s / self.ceiling_per_s:.2f} of its ceiling"
            )
        return text


def _read(source: LocalSource | S3Source, key: str) -> bytes | tuple[str, str]:
    """The bytes of `key`, or (READ_ERROR, reason)."""
    try:
        return source.read(key)
    except Exception as exc:
        return READ_ERROR, f"{type(exc).__name__}: {exc}"


def _decode(read: bytes | tuple[str, str], backend: Backend) -> ModelInput | tuple[str, str]:
    """The model input made from what `_read` returned, or (status, reason)."""
    if isinstance(read, tuple):
        return read
    try:
        return prepare(read, backend.spec.preprocessing)
    except ImageError as err:
        return BAD_IMAGE, err.reason


def _rows(
    keys: list[str], loaded: list[ModelInput | tuple[str, str]], backend: Backend
) -> tuple[list[dict[str, Any]], np.ndarray | None]:
    """One CSV row per key: the good images classified in one batch, the others with their reason;
    and that batch (None: no good image)."""
    arrays = [item.array for item in loaded if isinstance(item, ModelInput)]
    inputs = np.stack(arrays) if arrays else None
    probs = iter(backend.predict_proba(inputs, batch_size=len(inputs)) if inputs is not None else [])
    classes = backend.spec.classes
    rows: list[dict[str, Any]] = []
    for key, item in zip(keys, loaded):
        if isinstance(item, ModelInput):
            p = next(probs)
            best = int(p.argmax())
            row = {"path": key, "status": OK, "prediction": classes[best], "confidence": f"{p[best]:.6f}"}
            rows.append(row | {f"p_{name}": f"{value:.6f}" for name, value in zip(classes, p)})
        else:
            status, reason = item
            rows.append({"path": key, "status": status, "error": reason})
    return rows, inputs


def model_ceiling(backend: Backend, batch: np.ndarray, repeats: int = 5) -> float:
    """Images/s of the model alone on `batch`: the fastest of `repeats` forward passes after a
    warm-up (the fastest, not the median: a pass slowed by another process would flatter the
    ratio scoring reports against it). What scoring would reach if reading and decoding cost nothing."""
    backend.predict_proba(batch, batch_size=len(batch))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        backend.predict_proba(batch, batch_size=len(batch))
        times.append(time.perf_counter() - start)
    return len(batch) / min(times)


def _batches(keys: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(keys), size):
        yield keys[start : start + size]


def score(
    source: str,
    out: str,
    model: str | None = None,
    backend: str = "auto",
    precision: str = "auto",
    threads: int = 0,
    batch_size: int = 32,
    workers: int = 0,
    shard: Shard = ALL,
    pull: bool = True,
    progress: bool = True,
) -> Summary:
    """Score every image of `source` into the CSV `out`; see the module docstring."""
    root = repo_root()
    model_path = Path(model) if model else root / ONNX_MODEL_PATH
    if not model_path.is_file() and pull and model is None:
        pull_model_file(root, ONNX_MODEL_PATH)
        pull_int8_file(root, ONNX_MODEL_PATH)
    model_file, selection = open_backend(model_path, backend, precision, threads)
    chosen = selection.backend
    images = S3Source(source, s3_client()) if source.startswith("s3://") else LocalSource(Path(source))
    output = Output(out, columns(model_file.spec.classes))
    keys = [key for key in images.keys() if shard.owns(key)]
    todo = [key for key in keys if key not in output.done]
    summary = Summary(listed=len(keys), skipped=len(keys) - len(todo))
    log.info(
        "%d images in shard %d/%d of %s, %d already in %s; %s %s",
        len(keys),
        shard.index,
        shard.count,
        source,
        summary.skipped,
        out,
        chosen.name,
        chosen.precision,
    )
    try:
        _run(images, todo, output, chosen, batch_size, workers or available_cpus(), progress, summary)
    except BaseException:
        with contextlib.suppress(Exception):
            output.close()  # keep what was scored; the next run resumes from it
        raise
    output.close()
    return summary


def _run(
    images: LocalSource | S3Source,
    todo: list[str],
    output: Output,
    chosen: Backend,
    batch_size: int,
    workers: int,
    progress: bool,
    summary: Summary,
) -> None:
    """Score `todo` batch by batch: the next batch is read (I/O: files, S3) while one is decoded
    and classified; decoding (in `workers` threads) and the forward pass take turns.

    Why not decode during the forward pass: the backend splits each layer across all cores and
    waits for the slowest part, so a decoding thread on one core stalls every layer (measured:
    docs/serving.md, "`greenr predict` against the model alone")."""
    from tqdm import tqdm

    with (
        # Reads wait on disks and networks: more of them than cores, in their own pool so that
        # decoding never queues behind the next batch's reads.
        ThreadPoolExecutor(max(READERS, workers), thread_name_prefix="read") as readers,
        ThreadPoolExecutor(workers, thread_name_prefix="decode") as decoders,
        tqdm(total=len(todo), unit="img", file=sys.stderr, disable=not progress, mininterval=1.0) as bar,
    ):

        def start_reads(batch: list[str]) -> list[Future]:
            return [readers.submit(_read, images, key) for key in batch]

        started = time.perf_counter()
        sample: np.ndarray | None = None  # the fullest batch, for the model-alone ceiling
        batches = list(_batches(todo, batch_size))
        pending = start_reads(batches[0]) if batches else []
        for number, batch in enumerate(batches):
            read = [f.result() for f in pending]
            pending = start_reads(batches[number + 1]) if number + 1 < len(batches) else []
            loaded = list(decoders.map(_decode, read, [chosen] * len(read)))
            rows, inputs = _rows(batch, loaded, chosen)
            output.write(rows)
            for row in rows:
                summary.counts[row["status"]] += 1
            bar.update(len(rows))
            if inputs is not None and (sample is None or len(inputs) > len(sample)):
                sample = inputs
        summary.seconds = time.perf_counter() - started
    if sample is not None:
        summary.ceiling_per_s = model_ceiling(chosen, sample)
        summary.backend = f"{chosen.name} {chosen.precision}, batch {len(sample)}, {chosen.threads} threads"
