"""Stage `split`: stable, stratified train/val/test manifests of the images in data/.

Reads params `split.*`. Writes splits/{train,val,test}.csv (path, label, md5) and splits/rule.json:
small files committed to git, so a changed split shows up in a pull request. Images keep the split
the committed manifests give them; new images are placed by their content hash, near-duplicates
beside their twin (greenr/data/splitting.py), so test metrics stay comparable as data grows.
"""

from __future__ import annotations

import logging

from greenr.data.dataset import CLASSES, SPLITS, Example, file_md5, list_class_images, write_manifest
from greenr.data.images import ImageError, decode_image
from greenr.data.splitting import (
    Candidate,
    assign_splits,
    perceptual_hash,
    previous_assignment,
    rule_of,
    write_rule,
)
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
    candidates, bad = [], []
    for label, files in by_class.items():
        for path in files:
            try:
                image = decode_image(path)
            except ImageError as err:
                bad.append(f"{path.relative_to(root)}: {err.reason}")
                continue
            example = Example(path.relative_to(root).as_posix(), label, file_md5(path))
            candidates.append(Candidate(example, perceptual_hash(image)))
    if bad:
        # Ingest already rejects such files; here they are skipped, loudly, not trained on.
        log.warning("skipping %d unreadable image(s):\n  %s", len(bad), "\n  ".join(bad))
    fractions = {"train": params.train, "val": params.val, "test": params.test}
    rule = rule_of(fractions, params.seed)
    result = assign_splits(
        candidates, fractions, params.seed, previous_assignment(root, rule), params.near_duplicate_distance
    )
    log.info(
        "%d image(s) kept their split, %d placed for the first time (%d beside a near-duplicate twin); "
        "%d near-duplicate group(s)",
        result.kept,
        result.placed,
        result.joined_twin,
        len(result.groups),
    )
    for path, before, after in result.moved:
        log.warning("%s moved from %s to %s: a near-duplicate of it is in %s", path, before, after, after)
    for name in SPLITS:
        write_manifest(root / split_manifest(name), result.splits[name])
        counts = {c: sum(e.label == c for e in result.splits[name]) for c in CLASSES}
        log.info("%s: %d images %s", name, len(result.splits[name]), counts)
    write_rule(root, rule)


if __name__ == "__main__":
    main()
