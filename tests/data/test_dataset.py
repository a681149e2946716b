"""The split manifests (which image goes where: tests/data/test_splitting.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from greenr.data.dataset import Example, read_manifest, write_manifest
from greenr.errors import GreenrError


def examples(per_class: dict[str, int]) -> list[Example]:
    return [
        Example(f"data/{label}/{i:08d}.jpg", label, f"{i:032x}") for label, n in per_class.items() for i in range(n)
    ]


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
