"""The prepared data: each split's images, decoded and resized once, in tar shards (WebDataset layout).

A split of a million image files is a million files for DVC to hash, push and pull, and a million
decodes of full-size photos per epoch. The `prepare` stage turns each split into a few shards:

    shards/meta.json                 how the images were prepared (image size, JPEG quality, format)
    shards/<split>/NNNNNN.tar        `<key>.jpg` (the model's centre square, JPEG) and `<key>.cls`
                                     (the class name) per image, `shard_images` images per shard
    shards/<split>/index.csv         one row per image: shard, key, offset and size of its JPEG
                                     inside the tar, path, label, md5 of the original, its size

Any tar reader (webdataset, `tar -x`) reads the shards; this project reads single images by their
offset (greenr.data.loader), so any order, subset or rank split costs one read per image. Each
image is stored as the model sees it before normalisation: the centre square at the model's input
size, made by the very function the server uses on a request (greenr.data.images.prepare), then
JPEG-encoded; only the encoding's rounding separates it from what serving computes.

An image keeps its shard across data versions: a shard whose images are all still in the split
(same content, same class) is kept byte for byte; new images go into new shards; a shard that lost
an image is rewritten from its remaining JPEG bytes (never decoded again). Shard bytes are
reproducible (fixed tar headers), so DVC stores an unchanged shard once.

Torch-free: the prepare stage runs without torch.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import tarfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from greenr.atomic import write_csv, write_json
from greenr.data.dataset import Example
from greenr.data.images import ImageError, Preprocessing, prepare, resize_and_crop
from greenr.data.parallel import ordered_map
from greenr.errors import GreenrError

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the layout changes: every shard is then written again
INDEX_FIELDS = ("shard", "key", "offset", "size", "path", "label", "md5", "width", "height")
META = "meta.json"
INDEX = "index.csv"


@dataclass(frozen=True)
class Recipe:
    """How images become shard members; shards made with another recipe are all written again."""

    image_size: int
    quality: int
    format: int = FORMAT


@dataclass
class Member:
    """One image in a shard: where its JPEG bytes are, and what it is."""

    shard: str  # file name under shards/<split>/
    key: str
    offset: int
    size: int
    path: str
    label: str
    md5: str
    width: int  # of the original, upright
    height: int


@dataclass
class PrepareReport:
    kept_shards: int = 0
    written_shards: int = 0
    removed_shards: int = 0
    encoded: int = 0  # images decoded from data/ and encoded
    copied: int = 0  # images moved from a rewritten shard without decoding
    skipped: list[str] = field(default_factory=list)


def split_dir(shards: Path, split: str) -> Path:
    return shards / split


def read_index(folder: Path) -> list[Member]:
    """The members of a split's shards, in shard order; [] when there is no index."""
    path = folder / INDEX
    if not path.is_file():
        return []
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != INDEX_FIELDS:
            raise GreenrError(f"{path} has columns {reader.fieldnames}", "rebuild the shards: `dvc repro -f prepare`")
        return [
            Member(
                r["shard"],
                r["key"],
                int(r["offset"]),
                int(r["size"]),
                r["path"],
                r["label"],
                r["md5"],
                int(r["width"]),
                int(r["height"]),
            )
            for r in reader
        ]


def write_index(folder: Path, members: Sequence[Member]) -> None:
    write_csv(folder / INDEX, (asdict(m) for m in members), INDEX_FIELDS)


def read_recipe(shards: Path) -> Recipe | None:
    try:
        return Recipe(**json.loads((shards / META).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


# ---------------------------------------------------------------------------- encoding


# encode_image's reason for a file whose bytes are not those the split manifest hashed.
CHANGED_SINCE_SPLIT = "changed since the split stage hashed it"


def encode_image(source: Path, recipe: Recipe, md5: str = "") -> tuple[bytes, int, int, str]:
    """(JPEG bytes of the model's input square, original width, height, "") or (b"", 0, 0, why not);
    with `md5`, a file with other bytes gives CHANGED_SINCE_SPLIT.

    Module-level, so that worker processes run it (greenr.data.parallel.ordered_map)."""
    try:
        data = source.read_bytes()
    except OSError as err:
        return b"", 0, 0, f"could not be read ({err.strerror or err})"
    if md5 and hashlib.md5(data).hexdigest() != md5:
        return b"", 0, 0, CHANGED_SINCE_SPLIT
    try:
        model_input = prepare(data, Preprocessing(recipe.image_size))
    except ImageError as err:
        return b"", 0, 0, err.reason
    buffer = io.BytesIO()
    # 4:4:4 chroma: the model sees colour at full resolution, as it does when serving.
    Image.fromarray(model_input.array.transpose(1, 2, 0)).save(
        buffer, "JPEG", quality=recipe.quality, subsampling=0, optimize=False
    )
    return buffer.getvalue(), *model_input.original_size, ""


def decode_member(data: bytes, image_size: int, out: np.ndarray | None = None) -> np.ndarray:
    """A member's JPEG bytes -> uint8 (3, S, S) at `image_size` (resized when the shards hold another
    size), written into `out` when given (a batch's row: two fewer copies of the pixels)."""
    with Image.open(io.BytesIO(data)) as opened:
        rgb = opened if opened.mode == "RGB" else opened.convert("RGB")
        if rgb.size != (image_size, image_size):
            rgb = resize_and_crop(rgb, image_size)
        pixels = np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)
    if out is None:
        return np.ascontiguousarray(pixels)
    np.copyto(out, pixels)
    return out


# ---------------------------------------------------------------------------- writing


class ShardWriter:
    """Writes one tar shard atomically, with fixed headers so equal content gives equal bytes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.USTAR_FORMAT)
        self.count = 0

    def _add(self, name: str, data: bytes) -> int:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o644, "", ""
        self._tar.addfile(info, io.BytesIO(data))
        return self._tar.offset - tarfile.BLOCKSIZE * ((len(data) + tarfile.BLOCKSIZE - 1) // tarfile.BLOCKSIZE)

    def add(self, key: str, jpeg: bytes, label: str) -> int:
        """Add one image; returns the offset of its JPEG bytes in the tar."""
        offset = self._add(f"{key}.jpg", jpeg)
        self._add(f"{key}.cls", label.encode())
        self.count += 1
        return offset

    def close(self) -> None:
        self._tar.close()
        with open(self._tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        self._tar.close()
        self._tmp.unlink(missing_ok=True)


def read_bytes(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(offset)
        return handle.read(size)


def _shard_name(number: int) -> str:
    return f"{number:06d}.tar"


def prepare_split(
    shards: Path,
    split: str,
    rows: Sequence[Example],
    root: Path,
    recipe: Recipe,
    shard_images: int,
    workers: int = 0,
) -> tuple[list[Member], PrepareReport]:
    """Bring shards/<split>/ in line with the manifest `rows` (see the module docstring)."""
    folder = split_dir(shards, split)
    folder.mkdir(parents=True, exist_ok=True)
    report = PrepareReport()
    old = read_index(folder)
    wanted: dict[tuple[str, str], list[Example]] = defaultdict(list)
    for row in rows:
        wanted[(row.md5, row.label)].append(row)
    by_shard: dict[str, list[Member]] = defaultdict(list)
    for member in old:
        by_shard[member.shard].append(member)
    # A shard is kept when every image in it is still wanted (the same bytes in the same class).
    available = Counter({key: len(v) for key, v in wanted.items()})
    kept: list[Member] = []
    orphans: list[Member] = []  # images of shards that go, still wanted: copied, not decoded
    for name in sorted(by_shard):
        members = by_shard[name]
        need = Counter((m.md5, m.label) for m in members)
        if (folder / name).is_file() and all(available[k] >= n for k, n in need.items()):
            available -= need
            kept += members
            report.kept_shards += 1
        else:
            orphans += [m for m in members if (folder / name).is_file()]
    # Kept members take the current path of their content (a renamed file stays in its shard).
    claimed: dict[tuple[str, str], int] = Counter()
    for member in kept:
        key = (member.md5, member.label)
        member.path = wanted[key][claimed[key]].path
        claimed[key] += 1
    copies: list[tuple[Member, Example]] = []
    for member in orphans:
        key = (member.md5, member.label)
        if claimed[key] < len(wanted[key]):
            copies.append((member, wanted[key][claimed[key]]))
            claimed[key] += 1
    fresh = _fresh_rows(rows, kept, copies)

    numbers = [int(name.split(".")[0]) for name in by_shard if name.split(".")[0].isdigit()]
    next_number = max(numbers, default=-1) + 1
    written: list[Member] = []
    writer: ShardWriter | None = None

    def add(jpeg: bytes, row: Example, width: int, height: int) -> None:
        nonlocal writer, next_number
        if writer is None:
            writer = ShardWriter(folder / _shard_name(next_number))
            next_number += 1
        key = f"{writer.count:06d}"
        offset = writer.add(key, jpeg, row.label)
        written.append(Member(writer.path.name, key, offset, len(jpeg), row.path, row.label, row.md5, width, height))
        if writer.count >= shard_images:
            writer.close()
            report.written_shards += 1
            writer = None

    try:
        for member, row in copies:
            add(read_bytes(folder / member.shard, member.offset, member.size), row, member.width, member.height)
            report.copied += 1
        tasks = [(root / row.path, recipe, row.md5) for row in fresh]
        encoded = ordered_map(encode_image_task, tasks, workers, chunk=16)
        for row, (jpeg, width, height, reason) in zip(fresh, encoded):
            if reason == CHANGED_SINCE_SPLIT:
                # The stage does not depend on data/ itself (dvc.yaml): the manifests speak for it.
                raise GreenrError(f"{row.path} {reason}", "run `dvc repro`: the split stage hashes data/ again")
            if reason:
                report.skipped.append(f"{row.path}: {reason}")
                continue
            add(jpeg, row, width, height)
            report.encoded += 1
        if writer is not None:
            writer.close()
            report.written_shards += 1
            writer = None
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    members = kept + written
    live = {m.shard for m in members}
    for name in by_shard:
        if name not in live:
            (folder / name).unlink(missing_ok=True)
            report.removed_shards += 1
    write_index(folder, members)
    return members, report


def _fresh_rows(
    rows: Sequence[Example], kept: Sequence[Member], copies: Sequence[tuple[Member, Example]]
) -> list[Example]:
    """The manifest rows that neither a kept shard nor a copied member covers, in manifest order."""
    covered = Counter((m.md5, m.label) for m in kept) + Counter((r.md5, r.label) for _, r in copies)
    out = []
    for row in rows:
        key = (row.md5, row.label)
        if covered[key] > 0:
            covered[key] -= 1
        else:
            out.append(row)
    return out


def encode_image_task(task: tuple[Path, Recipe, str]) -> tuple[bytes, int, int, str]:
    return encode_image(*task)


def write_recipe(shards: Path, recipe: Recipe) -> None:
    write_json(shards / META, asdict(recipe))


def clear(shards: Path, splits: Iterable[str]) -> None:
    """Remove every shard and index (another recipe: all are written again)."""
    for split in splits:
        folder = split_dir(shards, split)
        if folder.is_dir():
            for path in folder.iterdir():
                if path.suffix in (".tar", ".csv"):
                    path.unlink()


def iter_members(shards: Path, split: str) -> Iterator[tuple[Member, bytes]]:
    """Every member of a split with its JPEG bytes, in index order (one open file per shard)."""
    folder = split_dir(shards, split)
    handle = None
    current = ""
    try:
        for member in read_index(folder):
            if member.shard != current:
                if handle is not None:
                    handle.close()
                handle, current = open(folder / member.shard, "rb"), member.shard
            assert handle is not None
            handle.seek(member.offset)
            yield member, handle.read(member.size)
    finally:
        if handle is not None:
            handle.close()
