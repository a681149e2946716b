"""Split determinism and stratification, and the split manifests."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from greenr.data.dataset import Example, read_manifest, stratified_split, write_manifest
from greenr.errors import GreenrError

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def examples(per_class: dict[str, int]) -> list[Example]:
    return [
        Example(f"data/{label}/{i:08d}.jpg", label, f"{i:032x}") for label, n in per_class.items() for i in range(n)
    ]


def paths(split: dict[str, list[Example]]) -> dict[str, list[str]]:
    return {name: [e.path for e in rows] for name, rows in split.items()}


def test_same_seed_gives_the_same_split_whatever_the_input_order():
    rows = examples({"dandelion": 40, "grass": 60})
    shuffled = rows[:]
    random.Random(7).shuffle(shuffled)
    assert paths(stratified_split(rows, FRACTIONS, seed=3)) == paths(stratified_split(shuffled, FRACTIONS, seed=3))
    assert paths(stratified_split(rows[::-1], FRACTIONS, seed=3)) == paths(stratified_split(rows, FRACTIONS, 3))


def test_different_seed_gives_a_different_split():
    rows = examples({"dandelion": 40, "grass": 60})
    assert paths(stratified_split(rows, FRACTIONS, seed=1)) != paths(stratified_split(rows, FRACTIONS, seed=2))


def test_every_image_lands_in_exactly_one_split_with_per_class_proportions():
    rows = examples({"dandelion": 200, "grass": 100})
    split = stratified_split(rows, FRACTIONS, seed=42)
    everything = [e.path for part in split.values() for e in part]
    assert sorted(everything) == sorted(e.path for e in rows) and len(set(everything)) == len(rows)
    for label, n in (("dandelion", 200), ("grass", 100)):
        counts = {name: sum(e.label == label for e in part) for name, part in split.items()}
        assert counts == {"train": round(n * 0.7), "val": round(n * 0.15), "test": n - round(n * 0.7) - round(n * 0.15)}
    assert all(part == sorted(part, key=lambda e: e.path) for part in split.values())


def test_too_few_images_per_class_is_a_clear_error():
    with pytest.raises(GreenrError) as err:
        stratified_split(examples({"dandelion": 20, "grass": 2}), FRACTIONS, seed=0)
    assert "'grass' has only 2 images" in err.value.what and "add images" in err.value.fix


def test_manifest_round_trip(tmp_path: Path):
    rows = examples({"dandelion": 3, "grass": 2}) + [Example("data/grass/a, b.jpg", "grass", "f" * 32)]
    path = tmp_path / "splits" / "train.csv"
    write_manifest(path, rows)
    assert read_manifest(path) == rows
    assert path.read_text().splitlines()[0] == "path,label,md5"
    assert not list(path.parent.glob(".*.tmp"))


def test_missing_or_malformed_manifest_is_a_clear_error(tmp_path: Path):
    with pytest.raises(GreenrError, match="is missing"):
        read_manifest(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("file,class\nx.jpg,grass\n")
    with pytest.raises(GreenrError, match="expected"):
        read_manifest(bad)
