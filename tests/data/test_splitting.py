"""The split survives new data: old images keep their split, new ones are placed by their content hash,
near-duplicates go to their twin's split, and every class stays stratified."""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from greenr.data.dataset import SPLITS, Example, read_manifest
from greenr.data.images import decode_image
from greenr.data.splitting import (
    HashedExample,
    assign_splits,
    near_duplicate_groups,
    near_duplicate_pairs,
    perceptual_hash,
    previous_assignment,
    rule_of,
    stratified_split,
    write_rule,
)
from greenr.errors import GreenrError
from tests.helpers.images import jpeg_bytes, resized_copy, scene
from tests.helpers.project import TINY_PARAMS, copy_project, project_env, run, set_params

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def examples(per_class: dict[str, int], start: int = 0) -> list[Example]:
    return [
        Example(f"data/{label}/{i:08d}.jpg", label, hashlib.md5(f"{label}{i}".encode()).hexdigest())
        for label, n in per_class.items()
        for i in range(start, start + n)
    ]


def paths(split: dict[str, list[Example]]) -> dict[str, list[str]]:
    return {name: [e.path for e in rows] for name, rows in split.items()}


def history(split: dict[str, list[Example]]) -> dict[str, str]:
    return {e.md5: name for name, rows in split.items() for e in rows}


def split_of(split: dict[str, list[Example]]) -> dict[str, str]:
    return {e.path: name for name, rows in split.items() for e in rows}


def counts(split: dict[str, list[Example]], label: str) -> dict[str, int]:
    return {name: sum(e.label == label for e in rows) for name, rows in split.items()}


# ---------------------------------------------------------------------------- a fresh split


def test_fresh_split_does_not_depend_on_input_order():
    rows = examples({"dandelion": 40, "grass": 60})
    shuffled = rows[:]
    random.Random(7).shuffle(shuffled)
    assert paths(stratified_split(rows, FRACTIONS, seed=3)) == paths(stratified_split(shuffled, FRACTIONS, seed=3))
    assert paths(stratified_split(rows[::-1], FRACTIONS, seed=3)) == paths(stratified_split(rows, FRACTIONS, 3))


def test_different_seed_gives_a_different_split():
    rows = examples({"dandelion": 40, "grass": 60})
    assert paths(stratified_split(rows, FRACTIONS, seed=1)) != paths(stratified_split(rows, FRACTIONS, seed=2))


def test_fresh_split_has_exact_per_class_quotas():
    rows = examples({"dandelion": 200, "grass": 100})
    split = stratified_split(rows, FRACTIONS, seed=42)
    everything = [e.path for part in split.values() for e in part]
    assert sorted(everything) == sorted(e.path for e in rows) and len(set(everything)) == len(rows)
    for label, n in (("dandelion", 200), ("grass", 100)):
        assert counts(split, label) == {
            "train": round(n * 0.7),
            "val": round(n * 0.15),
            "test": n - round(n * 0.7) - round(n * 0.15),
        }
    assert all(part == sorted(part, key=lambda e: e.path) for part in split.values())


def test_too_few_images_per_class_is_a_clear_error():
    with pytest.raises(GreenrError) as err:
        stratified_split(examples({"dandelion": 20, "grass": 2}), FRACTIONS, seed=0)
    assert "'grass' has only 2 images" in err.value.what and "add images" in err.value.fix


# ---------------------------------------------------------------------------- adding images


def test_added_images_leave_every_old_image_in_its_split():
    old = examples({"dandelion": 200, "grass": 200})
    first = stratified_split(old, FRACTIONS, seed=42)
    new = examples({"dandelion": 300, "grass": 300}, start=200)
    second = assign_splits([HashedExample(e) for e in old + new], FRACTIONS, 42, previous=history(first))
    before, after = split_of(first), split_of(second.splits)
    assert {path: after[path] for path in before} == before
    assert second.kept == 400 and second.placed == 600 and second.moved == []
    # New images follow the fractions (300 per class: within about 3 standard deviations of 45 for val/test).
    for label in ("dandelion", "grass"):
        placed = {name: n - counts(first, label)[name] for name, n in counts(second.splits, label).items()}
        assert sum(placed.values()) == 300
        assert 175 <= placed["train"] <= 245 and 25 <= placed["val"] <= 65 and 25 <= placed["test"] <= 65, placed


def test_new_images_are_placed_the_same_whether_added_at_once_or_in_steps():
    base = examples({"dandelion": 30, "grass": 30})
    first = stratified_split(base, FRACTIONS, seed=5)
    batch_a = examples({"dandelion": 20, "grass": 20}, start=30)
    batch_b = examples({"dandelion": 20, "grass": 20}, start=50)
    at_once = assign_splits([HashedExample(e) for e in base + batch_a + batch_b], FRACTIONS, 5, history(first))
    step = assign_splits([HashedExample(e) for e in base + batch_a], FRACTIONS, 5, history(first))
    in_steps = assign_splits([HashedExample(e) for e in base + batch_a + batch_b], FRACTIONS, 5, history(step.splits))
    assert paths(at_once.splits) == paths(in_steps.splits)


def test_a_renamed_image_keeps_its_split():
    rows = examples({"dandelion": 20, "grass": 20})
    first = stratified_split(rows, FRACTIONS, seed=1)
    test_image = first["test"][0]
    renamed = [Example("data/x/renamed.jpg", e.label, e.md5) if e == test_image else e for e in rows]
    second = assign_splits([HashedExample(e) for e in renamed], FRACTIONS, 1, history(first))
    assert split_of(second.splits)["data/x/renamed.jpg"] == "test"


def test_removing_images_until_a_split_is_empty_is_a_clear_error():
    rows = examples({"dandelion": 20, "grass": 20})
    first = stratified_split(rows, FRACTIONS, seed=1)
    left = [e for e in rows if not (e.label == "grass" and e in first["val"])]
    with pytest.raises(GreenrError) as err:
        assign_splits([HashedExample(e) for e in left], FRACTIONS, 1, history(first))
    assert "'grass' has no images in the val split" in err.value.what and "splits/*.csv" in err.value.fix


# ---------------------------------------------------------------------------- near-duplicates


def photo(label: str, seed: int) -> Image.Image:
    return scene(label, seed)


twin_bytes = resized_copy


def candidate(path: str, label: str, data: bytes) -> HashedExample:
    return HashedExample(Example(path, label, hashlib.md5(data).hexdigest()), perceptual_hash(decode_image(data)))


def test_resized_reencoded_copies_are_near_duplicates_and_distinct_photos_are_not():
    originals = [jpeg_bytes(photo(label, seed)) for label in ("dandelion", "grass") for seed in range(20)]
    hashes = [perceptual_hash(decode_image(b)) for b in originals]
    twins = [perceptual_hash(decode_image(twin_bytes(decode_image(b)))) for b in originals]
    groups = near_duplicate_groups(hashes + twins, max_distance=8)
    n = len(originals)
    assert all(groups[i] == groups[n + i] for i in range(n)), "a resized copy was not recognised"
    assert len(set(groups)) == n, "distinct photos were grouped together"
    assert len(set(near_duplicate_groups(hashes + twins, max_distance=0))) > n  # 0 = identical hashes only


@pytest.mark.parametrize("twin_split", SPLITS)
def test_a_near_duplicate_goes_to_its_twins_split(twin_split: str):
    old = [
        candidate(f"data/{label}/{seed:03d}.jpg", label, jpeg_bytes(photo(label, seed)))
        for label in ("dandelion", "grass")
        for seed in range(20)
    ]
    first = assign_splits(old, FRACTIONS, 42, max_distance=8)
    twin_of = next(e for e in first.splits[twin_split] if e.label == "dandelion")
    seed = int(Path(twin_of.path).stem)
    twin = candidate("data/dandelion/new-twin.jpg", "dandelion", twin_bytes(photo("dandelion", seed)))
    second = assign_splits([*old, twin], FRACTIONS, 42, history(first.splits), max_distance=8)
    after = split_of(second.splits)
    assert after["data/dandelion/new-twin.jpg"] == twin_split
    assert {p: after[p] for p in split_of(first.splits)} == split_of(first.splits)
    assert second.joined_twin == 1 and second.groups == [[twin_of.path, "data/dandelion/new-twin.jpg"]]


def test_a_near_duplicate_pair_split_apart_moves_to_the_stricter_split():
    a = candidate("data/grass/a.jpg", "grass", jpeg_bytes(photo("grass", 1)))
    b = candidate("data/grass/b.jpg", "grass", twin_bytes(photo("grass", 1)))
    others = [
        candidate(f"data/{label}/{seed:03d}.jpg", label, jpeg_bytes(photo(label, seed)))
        for label in ("dandelion", "grass")
        for seed in range(10, 30)
    ]
    previous = {**history(stratified_split([c.example for c in others], FRACTIONS, 0))}
    previous |= {a.example.md5: "train", b.example.md5: "test"}  # a leak made before grouping existed
    result = assign_splits([a, b, *others], FRACTIONS, 0, previous, max_distance=8)
    after = split_of(result.splits)
    assert after["data/grass/a.jpg"] == after["data/grass/b.jpg"] == "test"
    assert result.moved == [("data/grass/a.jpg", "train", "test")]


def test_a_fresh_split_keeps_near_duplicates_together():
    rows = []
    for seed in range(30):
        data = jpeg_bytes(photo("dandelion", seed))
        rows.append(candidate(f"data/dandelion/{seed:03d}.jpg", "dandelion", data))
        rows.append(candidate(f"data/dandelion/{seed:03d}-copy.jpg", "dandelion", twin_bytes(decode_image(data))))
    rows += [candidate(f"data/grass/{s:03d}.jpg", "grass", jpeg_bytes(photo("grass", s))) for s in range(30)]
    after = split_of(assign_splits(rows, FRACTIONS, 3, max_distance=8).splits)
    for seed in range(30):
        assert after[f"data/dandelion/{seed:03d}.jpg"] == after[f"data/dandelion/{seed:03d}-copy.jpg"]


# ---------------------------------------------------------------------------- the memory: manifests and rule


def test_previous_assignment_is_forgotten_when_the_split_params_change(tmp_path: Path):
    from greenr.data.dataset import write_manifest

    split = stratified_split(examples({"dandelion": 10, "grass": 10}), FRACTIONS, seed=1)
    for name in SPLITS:
        write_manifest(tmp_path / "splits" / f"{name}.csv", split[name])
    assert previous_assignment(tmp_path, rule_of(FRACTIONS, 1)) == history(split)  # no rule file yet: kept
    write_rule(tmp_path, rule_of(FRACTIONS, 1))
    assert previous_assignment(tmp_path, rule_of(FRACTIONS, 1)) == history(split)
    assert previous_assignment(tmp_path, rule_of(FRACTIONS, 2)) is None
    assert previous_assignment(tmp_path, rule_of({"train": 0.8, "val": 0.1, "test": 0.1}, 1)) is None
    (tmp_path / "splits" / "val.csv").unlink()
    assert previous_assignment(tmp_path, rule_of(FRACTIONS, 1)) is None


# ---------------------------------------------------------------------------- the stage


def write_scenes(folder: Path, label: str, seeds: range) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        (folder / f"{seed:08d}.jpg").write_bytes(jpeg_bytes(scene(label, seed, size=96)))


def test_split_stage_keeps_old_images_and_sends_a_resized_copy_to_its_twins_split(tmp_path: Path):
    project = copy_project(tmp_path / "p")
    for label in ("dandelion", "grass"):
        write_scenes(project / "data" / label, label, range(20))
    set_params(project, TINY_PARAMS)
    env = project_env(project, tmp_path / "state")
    run([sys.executable, "-m", "stages.split"], project, env)
    first = {name: read_manifest(project / "splits" / f"{name}.csv") for name in SPLITS}
    assert counts(first, "dandelion") == {"train": 14, "val": 3, "test": 3}
    test_image = next(e for e in first["test"] if e.label == "grass")
    (project / "data" / "grass" / "copy-of-a-test-image.jpg").write_bytes(
        resized_copy(Image.open(project / test_image.path))
    )
    write_scenes(project / "data" / "grass", "grass", range(20, 40))
    result = run([sys.executable, "-m", "stages.split"], project, env)
    second = {name: read_manifest(project / "splits" / f"{name}.csv") for name in SPLITS}
    after = split_of(second)
    assert after["data/grass/copy-of-a-test-image.jpg"] == "test"
    assert all(after[e.path] == name for name, rows in first.items() for e in rows)
    assert "40 image(s) kept their split, 21 placed for the first time (1 beside a near-duplicate twin)" in (
        result.stderr
    ), result.stderr
    # Changed split params: every image is placed afresh, at exact quotas.
    set_params(project, {"split": {"seed": 7}})
    result = run([sys.executable, "-m", "stages.split"], project, env)
    assert "split params changed" in result.stderr
    third = {name: read_manifest(project / "splits" / f"{name}.csv") for name in SPLITS}
    assert counts(third, "dandelion") == {"train": 14, "val": 3, "test": 3}
    assert sum(counts(third, "grass").values()) == 41


def test_split_stage_finds_the_classes_and_never_decodes_an_image_twice(tmp_path: Path):
    """A new class folder joins at its own quotas, every old image keeps its split, the class list
    follows the folders, and images the manifests list with a hash are not decoded again."""
    project = copy_project(tmp_path / "p")
    for label in ("dandelion", "grass"):
        write_scenes(project / "data" / label, label, range(20))
    set_params(project, TINY_PARAMS)
    env = project_env(project, tmp_path / "state")
    first_run = run([sys.executable, "-m", "stages.split"], project, env)
    assert "perceptual hashes: 0 known from the manifests, 40 computed" in first_run.stderr
    assert json.loads((project / "splits" / "classes.json").read_text()) == {"classes": ["dandelion", "grass"]}
    first = {name: read_manifest(project / "splits" / f"{name}.csv") for name in SPLITS}
    assert all(len(e.phash) == 16 for rows in first.values() for e in rows)

    write_scenes(project / "data" / "clover", "clover", range(100, 120))  # a class added later
    (project / "data" / ".thumbnails").mkdir()  # hidden: not a class
    second_run = run([sys.executable, "-m", "stages.split"], project, env)
    assert "perceptual hashes: 40 known from the manifests, 20 computed" in second_run.stderr
    assert json.loads((project / "splits" / "classes.json").read_text()) == {
        "classes": ["clover", "dandelion", "grass"]
    }
    second = {name: read_manifest(project / "splits" / f"{name}.csv") for name in SPLITS}
    after = split_of(second)
    assert all(after[e.path] == name for name, rows in first.items() for e in rows)
    assert counts(second, "clover") == {"train": 14, "val": 3, "test": 3}

    # data.classes in params must name exactly the folders.
    set_params(project, {"data": {"classes": ["dandelion", "grass"]}})
    result = run([sys.executable, "-m", "stages.split"], project, env, check=False)
    assert result.returncode == 2 and "folders not listed: clover" in result.stderr


def _clustered_hashes(n: int, seed: int) -> np.ndarray:
    """n 64-bit hashes in clusters of 10, members 0-10 bits from their centre (pairs up to 20 apart)."""
    rng = np.random.default_rng(seed)
    centres = np.repeat(rng.integers(0, 2**63, n // 10, dtype=np.uint64), 10)
    flips = np.zeros(n, dtype=np.uint64)
    for i, k in enumerate(rng.integers(0, 11, n)):
        for bit in rng.choice(64, int(k), replace=False):
            flips[i] |= np.uint64(1) << np.uint64(int(bit))
    return centres ^ flips


@pytest.mark.parametrize("n", [900, 6000])
def test_near_duplicate_search_finds_exactly_the_pairs_a_full_comparison_finds(n: int):
    values = _clustered_hashes(n, seed=n)
    found = set()
    for rows, cols in near_duplicate_pairs(values, 8):
        found.update(zip(rows.tolist(), cols.tolist()))
    distances = np.bitwise_count(values[:, None] ^ values[None, :])
    rows, cols = np.nonzero(np.triu(distances <= 8, k=1))
    assert found == set(zip(rows.tolist(), cols.tolist()))
    assert len(found) > n  # the clusters make plenty of pairs: the check is not vacuous
