"""The split manifests (which image goes where: tests/data/test_splitting.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from greenr.data.dataset import (
    Example,
    discover_classes,
    list_class_images,
    read_classes,
    read_manifest,
    resolve_classes,
    write_classes,
    write_manifest,
)
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
    assert path.read_text().splitlines()[0] == "path,label,md5,phash"
    assert not list(path.parent.glob(".*.tmp"))


def test_missing_or_malformed_manifest_is_a_clear_error(tmp_path: Path):
    with pytest.raises(GreenrError, match="is missing"):
        read_manifest(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("file,class\nx.jpg,grass\n")
    with pytest.raises(GreenrError, match="expected"):
        read_manifest(bad)


def test_manifests_from_before_the_phash_column_still_read(tmp_path: Path):
    path = tmp_path / "old.csv"
    path.write_text("path,label,md5\ndata/a/1.jpg,a," + "0" * 32 + "\n")
    assert read_manifest(path) == [Example("data/a/1.jpg", "a", "0" * 32, "")]


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8 not decoded here")


def test_classes_are_the_sorted_folders_with_images(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    data = tmp_path / "data"
    for name in ("tulip", "Daisy", "rose", "10-sunflower"):
        _image(data / name / "x.jpg")
    _image(data / "rose" / "deep" / "nested" / "y.png")
    _image(data / ".cache" / "z.jpg")  # hidden: never a class
    (data / "empty").mkdir()
    (data / "notes").mkdir()
    (data / "notes" / "readme.txt").write_text("no images here")
    _image(data / "tulip" / ".hidden" / "w.jpg")
    assert discover_classes(data) == ["10-sunflower", "Daisy", "rose", "tulip"]
    assert "ignoring hidden folder" in caplog.text and "no images" in caplog.text
    files = list_class_images(data, ["rose", "tulip"])
    assert [p.relative_to(data).as_posix() for p in files["rose"]] == ["rose/deep/nested/y.png", "rose/x.jpg"]
    assert [p.name for p in files["tulip"]] == ["x.jpg"]


def test_fewer_than_two_classes_is_a_clear_error(tmp_path: Path):
    _image(tmp_path / "data" / "only" / "x.jpg")
    with pytest.raises(GreenrError, match="needs at least 2"):
        discover_classes(tmp_path / "data")
    with pytest.raises(GreenrError, match="does not exist"):
        discover_classes(tmp_path / "nowhere")


def test_a_params_class_list_must_match_the_folders(tmp_path: Path):
    data = tmp_path / "data"
    for name in ("cat", "dog", "fox"):
        _image(data / name / "x.jpg")
    assert resolve_classes(data, None) == ["cat", "dog", "fox"]
    assert resolve_classes(data, ["fox", "cat", "dog"]) == ["fox", "cat", "dog"]  # its order: the output order
    with pytest.raises(GreenrError) as err:
        resolve_classes(data, ["cat", "dog", "owl"])
    assert "no images for owl" in err.value.what and "folders not listed: fox" in err.value.what


def test_class_list_round_trip_and_errors(tmp_path: Path):
    path = tmp_path / "splits" / "classes.json"
    write_classes(path, ["b", "a", "c"])
    assert read_classes(path) == ["b", "a", "c"]
    with pytest.raises(GreenrError, match="dvc repro split"):
        read_classes(tmp_path / "missing.json")
    path.write_text('{"classes": ["only"]}')
    with pytest.raises(GreenrError, match="2 or more"):
        read_classes(path)
