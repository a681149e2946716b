"""Stage `split`: stratified, seeded train/val/test manifests of the images in data/.

Reads params `split.*`. Writes splits/{train,val,test}.csv (path, label, md5): small files
committed to git, so a changed split shows up in a pull request.
"""

from __future__ import annotations

import logging

from greenr.data.dataset import (
    CLASSES,
    SPLITS,
    Example,
    file_md5,
    list_class_images,
    stratified_split,
    write_manifest,
)
from greenr.data.images import ImageError, decode_image
from greenr.errors import exits_cleanly, setup_logging
from greenr.params import load_section
from greenr.paths import DATA_DIR, repo_root, split_manifest

log = logging.getLogger("stages.split")


@exits_cleanly
def main() -> None:
    setup_logging()
    params = load_section("split")
    root = repo_root()
    by_class = list_class_images(root / DATA_DIR)
    examples, bad = [], []
    for label, files in by_class.items():
        for path in files:
            try:
                decode_image(path)
            except ImageError as err:
                bad.append(f"{path.relative_to(root)}: {err.reason}")
                continue
            examples.append(Example(path.relative_to(root).as_posix(), label, file_md5(path)))
    if bad:
        # Ingest already rejects such files; here they are skipped, loudly, not trained on.
        log.warning("skipping %d unreadable image(s):\n  %s", len(bad), "\n  ".join(bad))
    splits = stratified_split(
        examples, {"train": params.train, "val": params.val, "test": params.test}, seed=params.seed
    )
    for name in SPLITS:
        write_manifest(root / split_manifest(name), splits[name])
        counts = {c: sum(e.label == c for e in splits[name]) for c in CLASSES}
        log.info("%s: %d images %s", name, len(splits[name]), counts)


if __name__ == "__main__":
    main()
