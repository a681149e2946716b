"""Atomic file writes: readers see the old file or the new one, never half of one.

A write that fails (full disk, Ctrl-C, SIGKILL before the rename) leaves the previous file as it
was; only a SIGKILL can leave the hidden temporary file `.NAME.XXXX.tmp` beside it."""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from greenr.errors import GreenrError


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside `path`; on success fsync and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            free = shutil.disk_usage(path.parent).free
            raise GreenrError(
                f"no space left to write {path} ({free / 2**20:.1f} MiB free there); "
                f"{path.name} is as it was before this write",
                "free disk space (or give the project more room), then run the command again",
            ) from exc
        raise


def write_json(path: str | Path, obj: Any) -> None:
    """Write small, stable, diff-friendly JSON atomically."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        json.dump(obj, handle, indent=2, sort_keys=True)
        handle.write("\n")


def write_csv(path: str | Path, rows: Iterable[Mapping[str, Any]], fields: Sequence[str]) -> None:
    """Write a CSV with a header row atomically (Unix line ends, so reruns give identical bytes)."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(fields), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)
