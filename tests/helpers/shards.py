"""Prepared splits for tests: image files through the real prepare code, or arrays straight into shards."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from greenr.data.dataset import Example, file_md5, list_class_images
from greenr.data.loader import Samples, load_samples
from greenr.data.shards import Member, Recipe, ShardWriter, prepare_split, split_dir, write_index
from greenr.data.splitting import stratified_split
from greenr.paths import SHARDS_DIR


def prepare_folder(
    root: Path,
    classes: Sequence[str],
    image_size: int,
    fractions: Mapping[str, float] | None = None,
    shard_images: int = 1000,
    quality: int = 95,
) -> dict[str, Samples]:
    """Split root/data/<class>/ like the split stage, prepare it like the prepare stage, and load it."""
    rows = [
        Example(p.relative_to(root).as_posix(), label, file_md5(p))
        for label, files in list_class_images(root / "data", classes).items()
        for p in files
    ]
    split = stratified_split(rows, fractions or {"train": 0.6, "val": 0.3, "test": 0.1}, seed=0)
    recipe = Recipe(image_size=image_size, quality=quality)
    for name, split_rows in split.items():
        prepare_split(root / SHARDS_DIR, name, split_rows, root, recipe, shard_images, workers=1)
    return {name: load_samples(root, [name], classes) for name in split}


def write_arrays(
    root: Path, split: str, images: np.ndarray, labels: Sequence[str], classes: Sequence[str], shard_images: int = 1000
) -> Samples:
    """uint8 images (N, 3, S, S) as the shards of `split` under root/shards (JPEG quality 100)."""
    folder = split_dir(root / SHARDS_DIR, split)
    folder.mkdir(parents=True, exist_ok=True)
    members: list[Member] = []
    writer: ShardWriter | None = None
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        if writer is None:
            writer = ShardWriter(folder / f"{len({m.shard for m in members}):06d}.tar")
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0))).save(buffer, "JPEG", quality=100, subsampling=0)
        key = f"{writer.count:06d}"
        offset = writer.add(key, buffer.getvalue(), label)
        members.append(
            Member(writer.path.name, key, offset, len(buffer.getvalue()), f"{split}/{i}", label, f"{i:032x}", 0, 0)
        )
        if writer.count >= shard_images:
            writer.close()
            writer = None
    if writer is not None:
        writer.close()
    write_index(folder, members)
    return load_samples(root, [split], classes)
