"""The data set: class folders and split manifests (which image goes where: greenr.data.splitting;
the decoded tensors: greenr.data.tensors)."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from greenr.atomic import write_csv, write_json
from greenr.data.images import IMAGE_SUFFIXES
from greenr.errors import GreenrError
from greenr.paths import DATA_DVC

SPLITS: tuple[str, ...] = ("train", "val", "test")
MANIFEST_FIELDS = ("path", "label", "md5", "phash")
T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Example:
    path: str  # relative to the repo root, POSIX separators
    label: str
    md5: str
    # The 64-bit perceptual hash as 16 hex digits (greenr.data.splitting), "" where unknown: the
    # manifests keep it so that the split stage never decodes an image it has hashed before.
    phash: str = ""


def file_md5(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "md5").hexdigest()


def _visible(folder: Path) -> Iterator[Path]:
    """Files under `folder`, nested folders included, hidden files and folders left out."""
    return (
        p
        for p in folder.rglob("*")
        if not any(part.startswith(".") for part in p.relative_to(folder).parts) and p.is_file()
    )


def visible_files(folder: Path) -> list[Path]:
    """Files under `folder`, nested folders included, hidden files and folders left out, sorted."""
    return sorted(_visible(folder))


def _iter_images(folder: Path) -> Iterator[Path]:
    return (p for p in _visible(folder) if p.suffix.lower() in IMAGE_SUFFIXES)


def folder_images(folder: Path) -> list[Path]:
    """The image files under a class folder, nested folders included, hidden ones left out, sorted."""
    return sorted(_iter_images(folder))


def class_folders(data_dir: Path) -> list[str]:
    """The sorted sub-folders of `data_dir` that hold images (hidden and empty ones left out, with a warning)."""
    if not data_dir.is_dir():
        raise GreenrError(
            f"data folder {data_dir} does not exist",
            "run `make run` (it pulls or ingests the images) or `greenr ingest`",
        )
    classes = []
    for folder in sorted(p for p in data_dir.iterdir() if p.is_dir()):
        if folder.name.startswith("."):
            log.warning("ignoring hidden folder %s", folder)
        elif next(_iter_images(folder), None) is None:
            log.warning("ignoring folder %s: no images (.jpg/.jpeg/.png/.webp) in it", folder)
        else:
            classes.append(folder.name)
    return classes


def discover_classes(data_dir: Path) -> list[str]:
    """The class names: the sub-folders of `data_dir` that hold images, sorted (torchvision's
    ImageFolder rule). Hidden folders and folders without images are left out, with a warning."""
    classes = class_folders(data_dir)
    if len(classes) < 2:
        raise GreenrError(
            f"{data_dir} has {len(classes)} class folder(s) with images ({', '.join(classes) or 'none'}); "
            "a classifier needs at least 2",
            f"put each class's images in a folder of its own: {data_dir}/<class>/*.jpg",
        )
    return classes


def resolve_classes(data_dir: Path, wanted: Sequence[str] | None = None) -> list[str]:
    """The classes of `data_dir` (discover_classes), or `wanted` (params `data.classes`, in its
    order) when it names exactly the folders that hold images."""
    if not wanted:
        return discover_classes(data_dir)
    found = class_folders(data_dir)
    missing = sorted(set(wanted) - set(found))
    extra = sorted(set(found) - set(wanted))
    if missing or extra:
        parts = [
            f"no images for {', '.join(missing)}" if missing else "",
            f"folders not listed: {', '.join(extra)}" if extra else "",
        ]
        raise GreenrError(
            f"params.yaml data.classes does not match the class folders of {data_dir}: "
            + "; ".join(p for p in parts if p),
            "make data.classes list exactly the folders (or remove it: the folders are the classes)",
        )
    return list(wanted)


def list_class_images(data_dir: Path, classes: Sequence[str]) -> dict[str, list[Path]]:
    """Image files per class folder (nested folders included); a missing or empty class folder is an error."""
    found: dict[str, list[Path]] = {}
    for name in classes:
        folder = data_dir / name
        if not folder.is_dir():
            raise GreenrError(
                f"class folder {folder} is missing", f"put the {name} images in {folder}/ (or run `greenr ingest`)"
            )
        files = folder_images(folder)
        if not files:
            raise GreenrError(
                f"class folder {folder} has no images (.jpg/.jpeg/.png/.webp)",
                f"add {name} images to {folder}/ (or run `greenr ingest`)",
            )
        found[name] = files
    return found


def write_classes(path: Path, classes: Sequence[str]) -> None:
    """The class list the split was made with (`splits/classes.json`): every later step reads it."""
    write_json(path, {"classes": list(classes)})


def read_classes(path: Path) -> list[str]:
    """The class list `write_classes` wrote; GreenrError when it is missing or malformed."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GreenrError(f"{path} is missing", "run `dvc repro split` (it writes the class list)") from None
    except ValueError as err:
        raise GreenrError(f"{path} is not valid JSON ({err})", "regenerate it with `dvc repro -f split`") from None
    classes = raw.get("classes") if isinstance(raw, dict) else None
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) and c for c in classes):
        raise GreenrError(
            f"{path} does not hold a list of 2 or more class names", "regenerate it with `dvc repro -f split`"
        )
    return classes


def write_manifest(path: Path, rows: Sequence[Example]) -> None:
    write_csv(path, ({field: getattr(r, field) for field in MANIFEST_FIELDS} for r in rows), MANIFEST_FIELDS)


def read_manifest(path: Path) -> list[Example]:
    """The rows of a split manifest (manifests from before the phash column read with phash "")."""
    if not path.is_file():
        raise GreenrError(f"split manifest {path} is missing", "run `dvc repro split`")
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        fields = tuple(reader.fieldnames or ())
        if fields not in (MANIFEST_FIELDS, MANIFEST_FIELDS[:3]):
            raise GreenrError(
                f"{path} has columns {reader.fieldnames}, expected {list(MANIFEST_FIELDS)}",
                "regenerate it with `dvc repro -f split`",
            )
        return [Example(r["path"], r["label"], r["md5"], r.get("phash") or "") for r in reader]


def data_version(root: Path) -> tuple[str | None, int | None]:
    """(md5 of the data directory, its file count) as data.dvc records them; (None, None) when there
    is no data.dvc or it cannot be read."""
    import yaml

    try:
        outs = (yaml.safe_load((root / DATA_DVC).read_text()) or {}).get("outs") or [{}]
        return outs[0].get("md5"), outs[0].get("nfiles")
    except (OSError, AttributeError, IndexError, yaml.YAMLError):
        return None, None
