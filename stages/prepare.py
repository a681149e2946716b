"""Stage `prepare`: each split's images, decoded and resized once, in tar shards (greenr/data/shards.py).

Reads params `prepare.*` and `model.image_size`, the split manifests and the images they list.
Writes shards/ (a DVC output, cached and pushed: `dvc pull` on another machine gets the prepared
images without decoding the originals again). Decoding runs in one process per core. Shards whose
images are all still in their split are kept as they are, so new data adds shards instead of
rewriting them all.
"""

from __future__ import annotations

import logging
import time

from greenr.data.dataset import SPLITS, read_classes, read_manifest
from greenr.data.parallel import worker_count
from greenr.data.shards import Recipe, clear, prepare_split, read_recipe, write_recipe
from greenr.errors import GreenrError, exits_cleanly, setup_logging
from greenr.params import load_section
from greenr.paths import CLASSES_FILE, SHARDS_DIR, repo_root, split_manifest

log = logging.getLogger("stages.prepare")


@exits_cleanly
def main() -> None:
    setup_logging()
    params, model = load_section("prepare"), load_section("model")
    root = repo_root()
    classes = read_classes(root / CLASSES_FILE)
    shards = root / SHARDS_DIR
    shards.mkdir(exist_ok=True)
    recipe = Recipe(image_size=model.image_size, quality=params.quality)
    if read_recipe(shards) != recipe:
        log.info("preparing every image afresh (%s)", recipe)
        clear(shards, SPLITS)
    workers = worker_count()
    for split in SPLITS:
        rows = read_manifest(root / split_manifest(split))
        unknown = sorted({row.label for row in rows} - set(classes))
        if unknown:
            raise GreenrError(
                f"{split_manifest(split)} has classes {unknown} not in {CLASSES_FILE}", "run `dvc repro split`"
            )
        started = time.perf_counter()
        members, report = prepare_split(shards, split, rows, root, recipe, params.shard_images, workers)
        seconds = time.perf_counter() - started
        log.info(
            "%s: %d images in %d shard(s): %d kept, %d written, %d removed; %d images decoded (%.0f/s, %d "
            "processes), %d moved without decoding (%.1f s)",
            split,
            len(members),
            len({m.shard for m in members}),
            report.kept_shards,
            report.written_shards,
            report.removed_shards,
            report.encoded,
            report.encoded / seconds if seconds else 0.0,
            workers,
            report.copied,
            seconds,
        )
        if report.skipped:
            log.warning("skipped %d unreadable image(s):\n  %s", len(report.skipped), "\n  ".join(report.skipped))
    write_recipe(shards, recipe)


if __name__ == "__main__":
    main()
