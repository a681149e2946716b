"""The data set: class folders and split manifests (the decoded tensors: greenr.data.tensors)."""

from __future__ import annotations

import csv
import hashlib
import io
import random
from collections.abc import Callable, Iterable, Sequence
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


def stratified_split(examples: Iterable[Example], fractions: dict[str, float], seed: int) -> dict[str, list[Example]]:
    """Seeded split that keeps each class's share in every split.

    Per class: sort by path, shuffle with the seed, cut at rounded fractions. The result
    depends only on the file names and the seed, never on listing order or the machine.
    """
    by_class: dict[str, list[Example]] = {}
    for ex in examples:
        by_class.setdefault(ex.label, []).append(ex)
    out: dict[str, list[Example]] = {name: [] for name in SPLITS}
    for label in sorted(by_class):
        items = sorted(by_class[label], key=lambda e: e.path)
        random.Random(f"{seed}:{label}").shuffle(items)
        n = len(items)
        n_train = round(n * fractions["train"])
        n_val = round(n * fractions["val"])
        if min(n_train, n_val, n - n_train - n_val) < 1:
            raise GreenrError(
                f"class '{label}' has only {n} images: too few for a train/val/test split",
                "add images (at least 3 per class, far more to learn anything)",
            )
        out["train"] += items[:n_train]
        out["val"] += items[n_train : n_train + n_val]
        out["test"] += items[n_train + n_val :]
    return {name: sorted(rows, key=lambda e: e.path) for name, rows in out.items()}


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
