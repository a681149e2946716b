"""The data set: class folders and split manifests (which image goes where: greenr.data.splitting;
the decoded tensors: greenr.data.tensors)."""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from greenr.atomic import atomic_open
from greenr.data.images import IMAGE_SUFFIXES, ImageError
from greenr.errors import GreenrError

CLASSES: tuple[str, ...] = ("dandelion", "grass")
SPLITS: tuple[str, ...] = ("train", "val", "test")
MANIFEST_FIELDS = ("path", "label", "md5")
T = TypeVar("T")


@dataclass(frozen=True)
class Example:
    path: str  # relative to the repo root, POSIX separators
    label: str
    md5: str


def file_md5(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "md5").hexdigest()


def list_class_images(data_dir: Path, classes: Sequence[str] = CLASSES) -> dict[str, list[Path]]:
    """Image files per class folder; a missing or empty class folder is an error."""
    if not data_dir.is_dir():
        raise GreenrError(
            f"data folder {data_dir} does not exist",
            "run `make run` (it pulls or ingests the images) or `greenr ingest`",
        )
    found: dict[str, list[Path]] = {}
    for name in classes:
        folder = data_dir / name
        if not folder.is_dir():
            raise GreenrError(
                f"class folder {folder} is missing", f"put the {name} images in {folder}/ (or run `greenr ingest`)"
            )
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise GreenrError(
                f"class folder {folder} has no images (.jpg/.jpeg/.png/.webp)",
                f"add {name} images to {folder}/ (or run `greenr ingest`)",
            )
        found[name] = files
    extra = sorted(p.name for p in data_dir.iterdir() if p.is_dir() and p.name not in classes)
    if extra:
        raise GreenrError(
            f"unexpected class folder(s) in {data_dir}: {', '.join(extra)}",
            f"the classes are {', '.join(classes)}; move the other folders out",
        )
    return found


def write_manifest(path: Path, rows: Sequence[Example]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(MANIFEST_FIELDS)
    writer.writerows((r.path, r.label, r.md5) for r in rows)
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(buffer.getvalue())


def read_manifest(path: Path) -> list[Example]:
    if not path.is_file():
        raise GreenrError(f"split manifest {path} is missing", "run `dvc repro split`")
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != MANIFEST_FIELDS:
            raise GreenrError(
                f"{path} has columns {reader.fieldnames}, expected {list(MANIFEST_FIELDS)}",
                "regenerate it with `dvc repro -f split`",
            )
        return [Example(r["path"], r["label"], r["md5"]) for r in reader]


def read_listed(rows: Sequence[Example], root: Path, read: Callable[[Path], T], workers: int = 4) -> list[T]:
    """`read` every image a manifest lists, in parallel (PIL releases the GIL), in manifest order.

    A missing or unreadable file is a GreenrError that names it and says how to fix it.
    """

    def one(row: Example) -> T:
        try:
            return read(root / row.path)
        except FileNotFoundError:
            raise GreenrError(
                f"{row.path} is listed in the split but missing on disk",
                "run `dvc pull` or `dvc repro` to restore data and splits",
            ) from None
        except ImageError as err:
            raise GreenrError(
                f"{row.path}: {err.reason}", "remove or replace the file, then `dvc add data` and `dvc repro`"
            ) from None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, rows))
