"""Ingest: fill data/{class}/ from the public URL template or a local folder, then `dvc add data`.

Every file is checked to decode as an image before it is written; bad or missing ones are
skipped and reported, never written. Writes are atomic and idempotent: a file already present
with the same bytes is left alone, so a rerun changes nothing. Local files are copied byte for
byte, so `data.dvc` gets the same hash as the source folder would.

    greenr ingest [--source DIR_OR_URL_TEMPLATE] [--dest data] [--no-dvc-add]
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import logging
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from greenr import scm
from greenr.atomic import write_bytes
from greenr.data.dataset import visible_files
from greenr.data.images import IMAGE_SUFFIXES, ImageError, decode_image
from greenr.errors import GreenrError
from greenr.network import offline
from greenr.paths import DATA_DIR, DATA_DVC

log = logging.getLogger(__name__)

DEFAULT_URL_TEMPLATE = "https://raw.githubusercontent.com/btphan95/greenr-airflow/master/data/{class}/{index:08d}.jpg"
# The classes behind the default URL template. A local folder brings its own: its class folders.
DEFAULT_URL_CLASSES = ("dandelion", "grass")
# How many skipped files the summary names one by one; the rest are counted by reason.
SHOWN_SKIPS = 10
DEFAULT_COUNT = 200  # images per class at the URL template (indices 0..199)
# Statuses worth asking again: the server or a proxy is busy, not the file missing.
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
USER_AGENT = "greenr-ingest/0.1"


@dataclass(frozen=True)
class Skipped:
    file: str  # "class/name"
    reason: str


@dataclass
class IngestReport:
    """What one ingest did, per file ("class/name")."""

    source: str
    dest: Path
    written: list[str] = field(default_factory=list)  # new or changed files
    unchanged: list[str] = field(default_factory=list)  # already present with the same bytes
    skipped: list[Skipped] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # stale temp files, and extras with prune
    extra: list[str] = field(default_factory=list)  # in dest but not in the source (kept)
    not_images: int = 0  # files in a local source without an image suffix, left out
    dvc_updated: bool = False

    @property
    def ok(self) -> int:
        return len(self.written) + len(self.unchanged)

    def summary(self) -> str:
        lines = [
            (
                f"ingest from {self.source} into {self.dest}: {self.ok} ok "
                f"({len(self.written)} written, {len(self.unchanged)} unchanged), "
                f"{len(self.skipped)} skipped"
            )
        ]
        shown = sorted(self.skipped, key=lambda s: s.file)
        per_class = Counter(key.split("/", 1)[0] for key in self.written + self.unchanged)
        lines.append("  per class: " + ", ".join(f"{label} {n}" for label, n in sorted(per_class.items())))
        if self.not_images:
            lines.append(f"  left out {self.not_images} file(s) that are not images (.jpg/.jpeg/.png/.webp)")
        lines += [f"  skipped {s.file}: {s.reason}" for s in shown[:SHOWN_SKIPS]]
        if len(shown) > SHOWN_SKIPS:
            by_reason = Counter(_reason_kind(s.reason) for s in shown)
            kinds = "; ".join(f"{kind}: {n}" for kind, n in by_reason.most_common())
            lines.append(f"  ... and {len(shown) - SHOWN_SKIPS} more; all {len(shown)} skipped by reason: {kinds}")
        if self.extra:
            lines.append(
                f"  {len(self.extra)} file(s) in {self.dest} are not in the source and were kept "
                f"(pass --prune to remove them): {', '.join(self.extra[:5])}" + (" ..." if len(self.extra) > 5 else "")
            )
        if self.removed:
            lines.append(
                f"  removed {len(self.removed)} file(s): {', '.join(self.removed[:5])}"
                + (" ..." if len(self.removed) > 5 else "")
            )
        if self.dvc_updated:
            lines.append(f"  ran `dvc add {self.dest.name}` ({self.dest.name}.dvc updated)")
        return "\n".join(lines)


@dataclass(frozen=True)
class _Item:
    """One file to ingest: where it goes and how to get its bytes."""

    label: str
    name: str
    fetch: Callable[[], bytes]
    origin: str  # a path or URL, for messages

    @property
    def key(self) -> str:
        return f"{self.label}/{self.name}"


class _Missing(Exception):
    """The source says the file is not there (HTTP 404 and friends): do not retry."""


# ---------------------------------------------------------------------------- sources


def is_url(source: str) -> bool:
    return "://" in source


def _url_items(
    template: str, classes: Sequence[str], count: int, timeout: float, retries: int, backoff: float
) -> list[_Item]:
    if "{class}" not in template or "{index" not in template:
        raise GreenrError(
            f"URL template {template!r} lacks the {{class}} and {{index}} fields",
            "use a template like https://host/data/{class}/{index:08d}.jpg",
        )
    scheme = urllib.parse.urlsplit(template).scheme.lower()
    if scheme not in ("http", "https"):
        raise GreenrError(
            f"URL template {template!r} uses {scheme!r}; only http and https are supported",
            "use an http(s) URL template or a local folder",
        )
    host = urllib.parse.urlsplit(template.replace("{", "").replace("}", "")).hostname or ""
    if offline() and not _is_loopback(host):
        raise GreenrError(
            f"GREENR_OFFLINE is set, so the images cannot be downloaded from {host}",
            "set DATA_SOURCE to a local folder with one sub-folder per class "
            "(e.g. DATA_SOURCE=../shared/datasets/dandelion-grass), or unset GREENR_OFFLINE",
        )
    items = []
    for label in classes:
        for index in range(count):
            try:
                url = template.format_map({"class": label, "index": index})
            except (KeyError, ValueError, IndexError) as exc:
                raise GreenrError(
                    f"URL template {template!r} cannot be filled in: {exc}",
                    "use only the fields {class} and {index} (e.g. {index:08d})",
                ) from None
            name = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name
            if not name:
                raise GreenrError(
                    f"URL {url} does not end in a file name",
                    "the template must end in a file name such as {index:08d}.jpg",
                )
            items.append(_Item(label, name, _downloader(url, timeout, retries, backoff), url))
    return items


def _check_host_resolves(template: str) -> None:
    """Fail at once, not after hundreds of timed-out downloads, when the host has no address."""
    host = urllib.parse.urlsplit(template.replace("{", "").replace("}", "")).hostname or ""
    try:
        socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError) as exc:
        raise GreenrError(
            f"cannot resolve {host} ({exc}): no network, or no DNS, on this machine",
            "set DATA_SOURCE to a local folder with one sub-folder per class "
            "(e.g. DATA_SOURCE=../shared/datasets/dandelion-grass), or restore the network",
        ) from None


def _reason_kind(reason: str) -> str:
    """The reason without its file-specific detail, for counting skips by kind."""
    return reason.split(" (", 1)[0].split(":", 1)[0]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _downloader(url: str, timeout: float, retries: int, backoff: float) -> Callable[[], bytes]:
    def fetch() -> bytes:
        return download(url, timeout=timeout, retries=retries, backoff=backoff)

    return fetch


def download(url: str, timeout: float, retries: int, backoff: float) -> bytes:
    """GET `url`, retrying timeouts, dropped connections and 5xx/429 with exponential backoff.

    Raises _Missing for a definite "not there" (4xx), OSError after the last failed try.
    """
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    attempts = retries + 1
    for attempt in range(1, attempts + 1):
        try:
            # `timeout` bounds each blocking socket operation (connect, each read), not the total.
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.read()
        except urllib.error.HTTPError as err:
            if err.code not in RETRY_STATUSES:
                raise _Missing(f"HTTP {err.code} {err.reason}") from None
            failure: str = f"HTTP {err.code} {err.reason}"
        except (TimeoutError, urllib.error.URLError, http.client.HTTPException, ConnectionError) as err:
            reason = getattr(err, "reason", err)
            failure = "timed out" if isinstance(reason, TimeoutError) else f"{type(reason).__name__}: {reason}"
        if attempt < attempts:
            time.sleep(backoff * 2 ** (attempt - 1))
    raise OSError(f"{failure} (after {attempts} tries, timeout {timeout:g}s each)")


def _local_items(source: Path, classes: Sequence[str] | None) -> tuple[list[_Item], int]:
    """The images of every class folder of `source` (or of `classes`), and how many other files were left out."""
    if not source.is_dir():
        raise GreenrError(
            f"data source folder {source} does not exist",
            "set DATA_SOURCE (or --source) to a folder with one sub-folder per class, "
            "or unset it to download the default images from the public URL template",
        )
    folders = sorted(p.name for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
    wanted = list(classes) if classes else folders
    if len(wanted) < 2:
        raise GreenrError(
            f"data source {source} has {len(wanted)} class folder(s) ({', '.join(wanted) or 'none'}); "
            "a classifier needs 2 or more",
            f"put each class's images in a folder of its own: {source}/<class>/*.jpg",
        )
    items, not_images = [], 0
    for label in wanted:
        folder = source / label
        if not folder.is_dir():
            raise GreenrError(
                f"class folder {folder} is missing in the data source",
                f"the source needs one sub-folder per class: {', '.join(wanted)}",
            )
        files = visible_files(folder)
        images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        not_images += len(files) - len(images)
        if not images:
            raise GreenrError(
                f"class folder {folder} in the data source has no images",
                f"put the {label} images (.jpg/.jpeg/.png/.webp) in {folder}/ (or remove the folder)",
            )
        items += [_Item(label, p.relative_to(folder).as_posix(), p.read_bytes, str(p)) for p in images]
    others = sorted(set(folders) - set(wanted))
    if others:
        log.info("ignoring folder(s) in %s that are not among the classes: %s", source, ", ".join(others))
    return items, not_images


# ---------------------------------------------------------------------------- ingest


def _same_bytes(path: Path, data: bytes) -> bool:
    try:
        return path.stat().st_size == len(data) and path.read_bytes() == data
    except FileNotFoundError:
        return False


def _present_image(path: Path) -> bool:
    """A file from an earlier run that still decodes (so it need not be downloaded again)."""
    try:
        decode_image(path)
        return True
    except (OSError, ImageError):
        return False


def _ingest_one(item: _Item, dest: Path, trust_present: bool) -> tuple[str, str]:
    """("written" | "unchanged" | "skipped", reason)."""
    target = dest / item.label / item.name
    if Path(item.name).suffix.lower() not in IMAGE_SUFFIXES:
        return "skipped", f"not an image file name (expected {', '.join(sorted(IMAGE_SUFFIXES))})"
    if trust_present and target.is_file() and _present_image(target):
        return "unchanged", ""
    try:
        data = item.fetch()
    except _Missing as err:
        return "skipped", f"missing at the source ({err})"
    except OSError as err:
        return "skipped", f"could not be read: {err}"
    try:
        decode_image(data)
    except ImageError as err:
        return "skipped", f"does not decode as an image: {err.reason}"
    if _same_bytes(target, data):
        return "unchanged", ""
    write_bytes(target, data)
    return "written", ""


def _clean_stale_temp_files(dest: Path, classes: Sequence[str]) -> list[str]:
    """Temp files of an interrupted earlier run (atomic_open names them `.NAME.*.tmp`)."""
    removed = []
    for label in classes:
        folder = dest / label
        if folder.is_dir():
            for path in folder.rglob(".*.tmp"):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                removed.append(f"{label}/{path.name}")
    return removed


def ingest(
    source: str,
    dest: Path,
    *,
    classes: Sequence[str] | None = None,
    count: int = DEFAULT_COUNT,
    workers: int = 8,
    timeout: float = 20.0,
    retries: int = 3,
    backoff: float = 0.5,
    refresh: bool = False,
    prune: bool = False,
    dvc_add: bool = True,
) -> IngestReport:
    """Fill `dest/{class}/` from `source` (a folder or an http(s) URL template); see the module doc.

    URL sources: files already present that decode are kept without downloading them again,
    unless `refresh` (then they are downloaded and compared). `count` is the number of indices
    per class in the template (0..count-1). `prune` removes files in `dest` that the source
    lacks, so `dest` mirrors the source exactly. `classes`: the class folders to take (default:
    every class folder of a local source; the default classes for the URL template).
    """
    dest = Path(dest).resolve()
    if workers < 1 or retries < 0 or timeout <= 0 or count < 1:
        raise GreenrError(
            f"bad ingest settings: workers={workers}, retries={retries}, timeout={timeout}, count={count}",
            "use workers >= 1, retries >= 0, timeout > 0, count >= 1",
        )
    not_images = 0
    if is_url(source):
        classes = list(classes or DEFAULT_URL_CLASSES)
        items = _url_items(source, classes, count, timeout, retries, backoff)
        trust_present = not refresh
        shown_source = source
        if refresh or not all((dest / item.label / item.name).is_file() for item in items):
            _check_host_resolves(source)
    else:
        src = Path(source).expanduser().resolve()
        items, not_images = _local_items(src, classes)
        classes = sorted({item.label for item in items})
        trust_present = False  # reading a local file costs no more than checking the copy
        shown_source = str(src)
        if src == dest:
            raise GreenrError(
                f"the data source {src} is the destination itself", "point --source at a different folder"
            )
    report = IngestReport(source=shown_source, dest=dest, not_images=not_images)
    report.removed += _clean_stale_temp_files(dest, classes)
    log.info("ingesting %d file(s) from %s into %s (%d workers)", len(items), shown_source, dest, workers)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        outcomes = list(pool.map(lambda item: _ingest_one(item, dest, trust_present), items))
    for item, (status, reason) in zip(items, outcomes):
        if status == "skipped":
            report.skipped.append(Skipped(item.key, reason))
            log.debug("skipped %s (%s): %s", item.key, item.origin, reason)
        else:
            getattr(report, status).append(item.key)
    if report.skipped:  # one line here; the summary names them
        log.warning("skipped %d of %d file(s)", len(report.skipped), len(items))

    for label in classes:
        if not any(key.startswith(f"{label}/") for key in report.written + report.unchanged):
            reasons = sorted({s.reason for s in report.skipped if s.file.startswith(f"{label}/")})
            raise GreenrError(
                f"no usable {label} image came from {shown_source} "
                f"({sum(i.label == label for i in items)} tried; {'; '.join(reasons[:3])})",
                "check the network and the URL template (or the source folder), or set DATA_SOURCE "
                "to a local folder with one sub-folder per class",
            )

    wanted = {item.key for item in items}
    for label in classes:
        for path in visible_files(dest / label):
            key = f"{label}/{path.relative_to(dest / label).as_posix()}"
            if key not in wanted:
                if prune:
                    path.unlink()
                    report.removed.append(key)
                else:
                    report.extra.append(key)
    if dvc_add:
        report.dvc_updated = run_dvc_add(dest, changed=bool(report.written or report.removed))
    return report


def run_dvc_add(dest: Path, changed: bool = True) -> bool:
    """`dvc add` the data folder from the DVC project that contains it (writes `<dest>.dvc`).

    With nothing `changed` and `<dest>.dvc` matching the folder (`dvc status`), nothing is
    run, so a rerun leaves `data.dvc` untouched. Returns whether `dvc add` ran.
    """
    project = next((p for p in dest.parents if (p / ".dvc").is_dir()), None)
    if project is None:
        raise GreenrError(
            f"{dest} is not inside a DVC project, so `dvc add` cannot track it",
            "ingest into the project's data/ folder, or pass --no-dvc-add",
        )
    target = dest.relative_to(project).as_posix()
    dvc_file = dest.with_name(dest.name + ".dvc")
    up_to_date = (
        not changed
        and dvc_file.is_file()
        and scm.dvc("status", "--quiet", dvc_file.name, cwd=dvc_file.parent, capture=True, check=False).returncode == 0
    )
    if up_to_date:
        log.info("%s is up to date", dvc_file.name)
        return False
    log.info("dvc add %s (in %s)", target, project)
    scm.dvc(
        "add",
        "--quiet",
        target,
        cwd=project,
        capture=True,
        fix=f"fix the problem above, then run `dvc add {target}` in {project}",
    )
    return True


# ---------------------------------------------------------------------------- CLI


def default_source() -> str:
    return os.environ.get("DATA_SOURCE") or DEFAULT_URL_TEMPLATE


def _has_images(folder: Path) -> bool:
    return folder.is_dir() and any(p.is_file() for p in folder.rglob("*"))


def ensure_data(root: Path) -> IngestReport | None:
    """data/ from the DVC remote if it has this data version, else ingested from DATA_SOURCE or
    the web (the report of that ingest; None when data/ was there or was pulled)."""
    if _has_images(root / DATA_DIR):
        return None
    if (root / DATA_DVC).is_file():
        if not scm.remote_has_more(DATA_DVC):
            log.info("no data/ yet, and the DVC remote does not have this data version (a new remote): ingesting")
        else:
            log.info("no data/ yet: `dvc pull %s`", DATA_DVC)
            if scm.dvc("pull", DATA_DVC, check=False).returncode == 0 and _has_images(root / DATA_DIR):
                return None
            log.warning("`dvc pull %s` did not bring data/ back (see DVC's message above); ingesting instead", DATA_DVC)
    return ingest(default_source(), root / DATA_DIR)
