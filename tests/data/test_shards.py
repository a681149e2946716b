"""The prepared shards: WebDataset layout any tar reader reads, the server's preprocessing, stable
across data versions (kept shards, new shards, rewrites without decoding), reproducible bytes."""

from __future__ import annotations

import hashlib
import io
import shutil
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from greenr.data.dataset import Example, file_md5
from greenr.data.images import Preprocessing, load_model_input
from greenr.data.shards import Recipe, decode_member, iter_members, prepare_split, read_index
from greenr.errors import GreenrError
from tests.helpers.images import class_image, jpeg_bytes
from tests.helpers.project import TINY_PARAMS, copy_project, project_env, run, set_params

RECIPE = Recipe(image_size=48, quality=95)


def write_images(root: Path, label: str, seeds: range) -> list[Example]:
    rows = []
    for seed in seeds:
        path = root / "data" / label / f"{seed:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpeg_bytes(class_image(label, seed, size=64 + seed % 7)))
        rows.append(Example(path.relative_to(root).as_posix(), label, file_md5(path)))
    return rows


def shard_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.tar"))}


def test_shards_hold_the_servers_model_input_in_webdataset_layout(tmp_path: Path) -> None:
    rows = write_images(tmp_path, "dandelion", range(5)) + write_images(tmp_path, "grass", range(5))
    members, report = prepare_split(tmp_path / "shards", "train", rows, tmp_path, RECIPE, 4, workers=1)
    assert report.encoded == 10 and report.written_shards == 3 and not report.skipped
    assert [m.path for m in members] == [r.path for r in rows]
    folder = tmp_path / "shards" / "train"
    with tarfile.open(folder / "000000.tar") as tar:  # any tar reader: <key>.jpg + <key>.cls
        names = tar.getnames()
        assert names[:4] == ["000000.jpg", "000000.cls", "000001.jpg", "000001.cls"]
        assert tar.extractfile("000000.cls").read() == b"dandelion"  # type: ignore[union-attr]
    spec = Preprocessing(RECIPE.image_size)
    for member, data in iter_members(tmp_path / "shards", "train"):
        served = load_model_input(tmp_path / member.path, spec).astype(int)
        prepared = decode_member(data, RECIPE.image_size).astype(int)
        # JPEG at quality 95: a few grey levels on these noise textures (JPEG's worst case)
        assert np.abs(prepared - served).mean() < 3.0
        with Image.open(tmp_path / member.path) as original:
            assert (member.width, member.height) == original.size
    # a larger model input than the shards hold is resized from them
    assert decode_member(data, 64).shape == (3, 64, 64)


def test_new_data_adds_shards_and_keeps_the_old_ones_byte_for_byte(tmp_path: Path) -> None:
    first = write_images(tmp_path, "grass", range(8))
    prepare_split(tmp_path / "shards", "train", first, tmp_path, RECIPE, 4, workers=1)
    folder = tmp_path / "shards" / "train"
    before = shard_hashes(folder)
    added = first + write_images(tmp_path, "grass", range(8, 11))
    members, report = prepare_split(tmp_path / "shards", "train", added, tmp_path, RECIPE, 4, workers=1)
    assert (report.kept_shards, report.written_shards, report.encoded) == (2, 1, 3)
    after = shard_hashes(folder)
    assert {k: after[k] for k in before} == before and len(after) == 3
    assert sorted(m.path for m in members) == sorted(r.path for r in added)

    # Removing one image rewrites its shard from the JPEG bytes already there (no decoding) and
    # leaves the others alone; a renamed file keeps its place.
    gone = added[1]
    renamed = Example("data/grass/renamed.jpg", added[5].label, added[5].md5)
    shutil.move(tmp_path / added[5].path, tmp_path / renamed.path)
    (tmp_path / gone.path).unlink()
    rows = [r for r in added if r not in (gone, added[5])] + [renamed]
    members, report = prepare_split(tmp_path / "shards", "train", rows, tmp_path, RECIPE, 4, workers=1)
    assert (report.encoded, report.copied, report.removed_shards) == (0, 3, 1)
    assert sorted(m.path for m in members) == sorted(r.path for r in rows)
    final = shard_hashes(folder)
    assert final["000001.tar"] == after["000001.tar"] and final["000002.tar"] == after["000002.tar"]
    assert "000000.tar" not in final
    by_path = {m.path: m for m in members}
    for row in rows:  # every member's offset points at its own JPEG bytes
        member = by_path[row.path]
        data = (folder / member.shard).read_bytes()[member.offset : member.offset + member.size]
        assert data[:2] == b"\xff\xd8" and member.md5 == row.md5


def test_the_same_images_give_the_same_shard_bytes(tmp_path: Path) -> None:
    rows = write_images(tmp_path, "grass", range(6))
    prepare_split(tmp_path / "a", "test", rows, tmp_path, RECIPE, 100, workers=2)
    prepare_split(tmp_path / "b", "test", rows, tmp_path, RECIPE, 100, workers=1)
    assert shard_hashes(tmp_path / "a" / "test") == shard_hashes(tmp_path / "b" / "test")
    assert (tmp_path / "a" / "test" / "index.csv").read_bytes() == (tmp_path / "b" / "test" / "index.csv").read_bytes()


def test_an_unreadable_image_is_skipped_and_named(tmp_path: Path) -> None:
    rows = write_images(tmp_path, "grass", range(3))
    (tmp_path / rows[1].path).write_bytes(b"\xff\xd8 truncated")
    rows[1] = Example(rows[1].path, "grass", file_md5(tmp_path / rows[1].path))
    members, report = prepare_split(tmp_path / "shards", "val", rows, tmp_path, RECIPE, 100, workers=1)
    assert len(members) == 2 and report.skipped and rows[1].path in report.skipped[0]


def test_a_photo_changed_since_the_split_stops_prepare_and_says_to_rerun_split(tmp_path: Path) -> None:
    # prepare does not depend on data/ in dvc.yaml: the manifests' md5s stand for the photos.
    rows = write_images(tmp_path, "grass", range(3))
    (tmp_path / rows[2].path).write_bytes(jpeg_bytes(class_image("grass", 99, size=64)))
    with pytest.raises(GreenrError, match=rf"{rows[2].path} changed since the split") as raised:
        prepare_split(tmp_path / "shards", "val", rows, tmp_path, RECIPE, 100, workers=1)
    assert "dvc repro" in raised.value.fix
    assert not list((tmp_path / "shards" / "val").glob("*.tar"))


def test_prepare_stage_rebuilds_when_the_recipe_changes(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "p")
    for label in ("dandelion", "grass"):
        write_images(project, label, range(10))
    set_params(project, TINY_PARAMS | {"prepare": {"shard_images": 4}})
    env = project_env(project, tmp_path / "state")
    run([sys.executable, "-m", "stages.split"], project, env)
    first = run([sys.executable, "-m", "stages.prepare"], project, env)
    assert "14 images in 4 shard(s)" in first.stderr  # train: 70% of 20
    again = run([sys.executable, "-m", "stages.prepare"], project, env)
    assert "0 images decoded" in again.stderr and "4 kept" in again.stderr
    set_params(project, {"model": {"image_size": 40}})
    changed = run([sys.executable, "-m", "stages.prepare"], project, env)
    assert "preparing every image afresh" in changed.stderr
    index = read_index(project / "shards" / "train")
    data = (project / "shards" / "train" / index[0].shard).read_bytes()
    with Image.open(io.BytesIO(data[index[0].offset : index[0].offset + index[0].size])) as image:
        assert image.size == (40, 40)


@pytest.mark.parametrize("workers", [1, 2])
def test_prepare_decodes_in_processes(tmp_path: Path, workers: int) -> None:
    rows = write_images(tmp_path, "grass", range(40))
    members, report = prepare_split(tmp_path / "shards", "train", rows, tmp_path, RECIPE, 16, workers=workers)
    assert report.encoded == 40 and [m.path for m in members] == [r.path for r in rows]
