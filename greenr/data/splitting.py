"""Which split each image belongs to: stable across data versions, stratified, free of near-duplicate leaks.

Test metrics are only comparable across data versions if adding images leaves the old ones where
they were. The rule:

- An image keeps the split it already had. The committed manifests (`splits/*.csv`, keyed by the
  content md5, so a renamed file keeps its split too) are the memory of earlier assignments, as
  long as the split params are the ones they were made with (`splits/rule.json`).
- A new image goes where a stable rule on its content hash puts it: u = sha256("seed:md5") read as
  a number in [0, 1); train below `train`, val below `train + val`, test above. No other image
  moves, and every class gets 70/15/15 in expectation.
- A class without earlier assignments (a fresh data set, or changed params) is cut at exact
  per-class quotas in the order of u, so small data sets get exact, non-empty splits.
- Near-duplicates (the same photo resized or re-encoded: 64-bit perceptual hashes at most
  `near_duplicate_distance` bits apart) form one group that lives in one split: a new twin joins
  its twin's split; a group whose members sit in different splits (a leak) moves to the strictest
  of them (test over val over train), so a test image never leaves the test split.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from greenr.atomic import write_json
from greenr.data.dataset import SPLITS, Example, read_manifest
from greenr.data.images import ImageError, decode_image
from greenr.errors import GreenrError
from greenr.paths import SPLIT_RULE, split_manifest

log = logging.getLogger(__name__)
# A near-duplicate group goes to its strictest member's split: test images never move to train.
STRICTNESS = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class HashedExample:
    """An image to place: its manifest row and its perceptual hash (None: never grouped)."""

    example: Example
    phash: int | None = None


@dataclass
class Assignment:
    splits: dict[str, list[Example]]
    kept: int = 0  # images that kept the split they had
    placed: int = 0  # images placed for the first time
    joined_twin: int = 0  # of those, placed beside a near-duplicate that already had a split
    moved: list[tuple[str, str, str]] = field(default_factory=list)  # (path, from, to): leaks repaired
    groups: list[list[str]] = field(default_factory=list)  # near-duplicate groups (paths), 2+ members


def perceptual_hash(img: Image.Image) -> int:
    """64-bit DCT perceptual hash (imagehash.phash): resizing and re-encoding change few bits."""
    import imagehash

    return int(str(imagehash.phash(img)), 16)


def file_phash(path: Path) -> tuple[str, str]:
    """(the perceptual hash as 16 hex digits, "") of an image file, or ("", why it is unusable).

    Module-level, so that worker processes can run it (greenr.data.parallel.ordered_map)."""
    try:
        return f"{perceptual_hash(decode_image(path)):016x}", ""
    except ImageError as err:
        return "", err.reason


def candidate(example: Example) -> HashedExample:
    """The example with its manifest phash (16 hex digits) as a number."""
    return HashedExample(example, int(example.phash, 16) if example.phash else None)


def known_phashes(root: Path) -> dict[str, str]:
    """Content md5 -> perceptual hash of every image the committed manifests list with one."""
    found: dict[str, str] = {}
    for name in SPLITS:
        path = root / split_manifest(name)
        if path.is_file():
            found.update((row.md5, row.phash) for row in read_manifest(path) if row.phash)
    return found


def hash_position(md5: str, seed: int) -> float:
    """Where the content hash puts an image in [0, 1): the same for the same bytes and seed, always."""
    digest = hashlib.sha256(f"{seed}:{md5}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_by_position(position: float, fractions: Mapping[str, float]) -> str:
    if position < fractions["train"]:
        return "train"
    if position < fractions["train"] + fractions["val"]:
        return "val"
    return "test"


def _popcount(values: np.ndarray) -> np.ndarray:
    return np.bitwise_count(values)


def _chunking(n: int, max_distance: int) -> tuple[list[tuple[int, int]], int]:
    """Bit ranges (shift, width) of the 64-bit hash and the bits `r` a chunk may differ in.

    Pigeonhole: two hashes at most d bits apart differ in at most r = d // m bits in at least one
    of m chunks. Few chunks mean many probes per chunk (all values within r bits), many chunks mean
    crowded buckets; m is picked to minimise probes plus expected candidate pairs for n hashes.
    """
    best: tuple[float, int] | None = None
    for m in range(1, min(max_distance + 1, 64) + 1):
        r = max_distance // m
        widths = [64 // m + (1 if i < 64 % m else 0) for i in range(m)]
        probes = [sum(math.comb(w, k) for k in range(r + 1)) for w in widths]
        # Each probe is one pass over the n hashes; each candidate pair costs about a fifth of a
        # pass's per-hash work (measured: docs/scale.md).
        cost = n * sum(probes) + 0.2 * sum(p * n * n / 2.0**w for p, w in zip(probes, widths))
        if best is None or cost < best[0]:
            best = (cost, m)
    assert best is not None
    m = best[1]
    widths = [64 // m + (1 if i < 64 % m else 0) for i in range(m)]
    shifts = [sum(widths[:i]) for i in range(m)]
    return list(zip(shifts, widths)), max_distance // m


def near_duplicate_pairs(values: np.ndarray, max_distance: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every pair (i < j) of 64-bit hashes at most `max_distance` bits apart, in batches of index arrays.

    Exact and sub-quadratic (multi-index hashing: see `_chunking`): each chunk's values are sorted
    once, and every probe (a chunk value with up to r bits flipped) is a vectorised binary search.
    Small inputs are compared pairwise, which is cheaper there.
    """
    n = len(values)
    if n < 2:
        return
    if n <= 4096:
        for start in range(0, n, 1024):
            block = values[start : start + 1024]
            rows, cols = np.nonzero(_popcount(block[:, None] ^ values[None, :]) <= max_distance)
            rows = rows + start
            keep = rows < cols
            yield rows[keep], cols[keep]
        return
    chunks, r = _chunking(n, max_distance)
    for shift, width in chunks:
        mask = np.uint64((1 << width) - 1)
        keys = (values >> np.uint64(shift)) & mask
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        for k in range(r + 1):
            for bits in itertools.combinations(range(width), k):
                flip = np.uint64(sum(1 << b for b in bits))
                probe = keys ^ flip
                lo = np.searchsorted(sorted_keys, probe, side="left")
                hi = np.searchsorted(sorted_keys, probe, side="right")
                counts = hi - lo
                if not counts.any():
                    continue
                rows = np.repeat(np.arange(n), counts)
                # The j-th candidate of row i sits at lo[i] + j in the sorted order.
                offsets = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
                cols = order[np.repeat(lo, counts) + offsets]
                keep = rows < cols
                rows, cols = rows[keep], cols[keep]
                close = _popcount(values[rows] ^ values[cols]) <= max_distance
                yield rows[close], cols[close]


def near_duplicate_groups(hashes: Sequence[int | None], max_distance: int) -> list[int]:
    """A group id per image: images whose hashes are within `max_distance` bits, transitively, share one."""
    parent = list(range(len(hashes)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    index = [i for i, h in enumerate(hashes) if h is not None]
    values = np.array([hashes[i] for i in index], dtype=np.uint64)
    for rows, cols in near_duplicate_pairs(values, max_distance):
        for row, col in zip(rows.tolist(), cols.tolist()):
            a, b = index[row], index[col]
            root_a, root_b = find(a), find(b)
            if root_a != root_b:
                parent[max(root_a, root_b)] = min(root_a, root_b)
    return [find(i) for i in range(len(hashes))]


def _quota_targets(n: int, fractions: Mapping[str, float], label: str) -> tuple[int, int]:
    n_train, n_val = round(n * fractions["train"]), round(n * fractions["val"])
    if min(n_train, n_val, n - n_train - n_val) < 1:
        raise GreenrError(
            f"class '{label}' has only {n} images: too few for a train/val/test split",
            "add images (at least 3 per class, far more to learn anything)",
        )
    return n_train, n_val


def assign_splits(
    candidates: Iterable[HashedExample],
    fractions: Mapping[str, float],
    seed: int,
    previous: Mapping[str, str] | None = None,
    max_distance: int = 8,
) -> Assignment:
    """Place every candidate (see the module docstring); `previous` maps content md5 -> earlier split."""
    items = sorted(candidates, key=lambda c: c.example.path)
    previous = previous or {}
    group_of = near_duplicate_groups([c.phash for c in items], max_distance)
    groups: dict[int, list[HashedExample]] = {}
    for item, gid in zip(items, group_of):
        groups.setdefault(gid, []).append(item)
    position = {c.example.md5: hash_position(c.example.md5, seed) for c in items}

    def anchor(members: list[HashedExample]) -> Example:
        return min((m.example for m in members), key=lambda e: (position[e.md5], e.path))

    with_history = {c.example.label for c in items if c.example.md5 in previous}
    target: dict[int, str] = {}
    out = Assignment(splits={name: [] for name in SPLITS})
    fresh: dict[str, list[int]] = {}
    for gid, members in groups.items():
        if len(members) > 1:
            out.groups.append([m.example.path for m in members])
        known = {previous[m.example.md5] for m in members if m.example.md5 in previous}
        first = anchor(members)
        if known:
            target[gid] = max(known, key=STRICTNESS.__getitem__)
        elif first.label in with_history:
            target[gid] = split_by_position(position[first.md5], fractions)
        else:
            fresh.setdefault(first.label, []).append(gid)
    for label, gids in sorted(fresh.items()):
        # A class seen for the first time: exact quotas in the order of u.
        n = sum(len(groups[gid]) for gid in gids)
        n_train, n_val = _quota_targets(n, fractions, label)
        counts = dict.fromkeys(SPLITS, 0)
        for gid in sorted(gids, key=lambda g: (position[anchor(groups[g]).md5], anchor(groups[g]).path)):
            name = "train" if counts["train"] < n_train else "val" if counts["val"] < n_val else "test"
            target[gid] = name
            counts[name] += len(groups[gid])
    for gid, members in groups.items():
        has_history = any(m.example.md5 in previous for m in members)
        for member in members:
            ex, name = member.example, target[gid]
            out.splits[name].append(ex)
            before = previous.get(ex.md5)
            if before is None:
                out.placed += 1
                out.joined_twin += has_history
            elif before == name:
                out.kept += 1
            else:
                out.moved.append((ex.path, before, name))
    for name in SPLITS:
        out.splits[name].sort(key=lambda e: e.path)
    for label in sorted({c.example.label for c in items}):
        empty = [name for name in SPLITS if not any(e.label == label for e in out.splits[name])]
        if empty:
            raise GreenrError(
                f"class '{label}' has no images in the {'/'.join(empty)} split",
                "add images of that class, or reassign every image: delete splits/*.csv and `dvc repro split`",
            )
    return out


def stratified_split(
    examples: Iterable[Example], fractions: Mapping[str, float], seed: int
) -> dict[str, list[Example]]:
    """A fresh split of `examples` (no history, no near-duplicate grouping): exact per-class quotas."""
    return assign_splits((candidate(e) for e in examples), fractions, seed).splits


def rule_of(fractions: Mapping[str, float], seed: int) -> dict[str, float | int]:
    """What splits/rule.json records: the params the manifests were made with."""
    return {"seed": seed, **{name: float(fractions[name]) for name in SPLITS}}


def previous_assignment(root: Path, rule: Mapping[str, float | int]) -> dict[str, str] | None:
    """Content md5 -> split from the committed manifests; None when there are none or the params changed."""
    manifests = {name: root / split_manifest(name) for name in SPLITS}
    if not all(path.is_file() for path in manifests.values()):
        log.info("no earlier split manifests: every image is placed afresh")
        return None
    rule_path = root / SPLIT_RULE
    if rule_path.is_file():
        try:
            recorded = json.loads(rule_path.read_text(encoding="utf-8"))
        except ValueError:
            recorded = None
        if recorded != dict(rule):
            log.warning("split params changed (%s -> %s): every image is placed afresh", recorded, dict(rule))
            return None
    found: dict[str, str] = {}
    for name, path in manifests.items():
        for row in read_manifest(path):
            # The same bytes listed twice (a copy in two folders): the strictest split wins.
            if row.md5 not in found or STRICTNESS[name] > STRICTNESS[found[row.md5]]:
                found[row.md5] = name
    return found


def write_rule(root: Path, rule: Mapping[str, float | int]) -> None:
    write_json(root / SPLIT_RULE, dict(rule))
