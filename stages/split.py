"""Stage `split`: the class list and stable, stratified train/val/test manifests of the images in data/.

Reads params `data.*` and `split.*`. The classes are the sorted class folders of data/ (or
`data.classes`, which must name exactly those); writes splits/classes.json, splits/{train,val,test}.csv
(path, label, md5, phash) and splits/rule.json: small files committed to git, so a changed split
shows up in a pull request. Images keep the split the committed manifests give them; new images are
placed by their content hash, near-duplicates beside their twin (greenr/data/splitting.py), so test
metrics stay comparable as data grows. Hashing runs in one process per core; an image whose content
md5 a manifest already lists is never decoded again (its perceptual hash is in the manifest).
"""

from __future__ import annotations

import logging
from collections import Counter

from greenr.data.dataset import (
    SPLITS,
    Example,
    file_md5,
    list_class_images,
    resolve_classes,
    write_classes,
    write_manifest,
)
from greenr.data.parallel import ordered_map
from greenr.data.splitting import (
    assign_splits,
    candidate,
    file_phash,
    known_phashes,
    previous_assignment,
    rule_of,
    write_rule,
)
from greenr.errors import exits_cleanly, setup_logging
from greenr.params import load_section
from greenr.paths import CLASSES_FILE, DATA_DIR, repo_root, split_manifest

log = logging.getLogger("stages.split")


@exits_cleanly
def main() -> None:
    setup_logging()
    params, data_params = load_section("split"), load_section("data")
    root = repo_root()
    classes = resolve_classes(root / DATA_DIR, data_params.classes)
    files = [(label, path) for label, paths in list_class_images(root / DATA_DIR, classes).items() for path in paths]
    log.info("%d classes (%s), %d images", len(classes), ", ".join(classes), len(files))
    md5s = list(ordered_map(file_md5, [path for _, path in files], chunk=64))
    phashes = known_phashes(root)
    unknown = sorted({md5: path for (_, path), md5 in zip(files, md5s) if md5 not in phashes}.items())
    bad = []
    for (md5, path), (phash, reason) in zip(unknown, ordered_map(file_phash, [path for _, path in unknown])):
        if reason:
            bad.append(f"{path.relative_to(root)}: {reason}")
        else:
            phashes[md5] = phash
    log.info("perceptual hashes: %d known from the manifests, %d computed", len(set(md5s)) - len(unknown), len(unknown))
    if bad:
        # Ingest already rejects such files; here they are skipped, loudly, not trained on.
        log.warning("skipping %d unreadable image(s):\n  %s", len(bad), "\n  ".join(bad))
    candidates = [
        candidate(Example(path.relative_to(root).as_posix(), label, md5, phashes[md5]))
        for (label, path), md5 in zip(files, md5s)
        if md5 in phashes
    ]
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
        counts = Counter(e.label for e in result.splits[name])
        log.info("%s: %d images %s", name, len(result.splits[name]), {c: counts[c] for c in classes})
    write_rule(root, rule)
    write_classes(root / CLASSES_FILE, classes)


if __name__ == "__main__":
    main()
