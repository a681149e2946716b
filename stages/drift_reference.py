"""Stage `drift_reference`: statistics of the training images for the server's drift monitor.

Reads splits/train.csv and the images it lists. Writes metrics/drift_reference.json (decile bins
of brightness, saturation, colour balance and size, and the class shares), committed to git
(`cache: false`) so every image and checkout of the server has the reference of its model.
"""

from __future__ import annotations

import logging

from greenr.atomic import write_json
from greenr.data.dataset import read_manifest
from greenr.errors import exits_cleanly, setup_logging
from greenr.ops.drift import build_reference
from greenr.paths import DRIFT_REFERENCE, repo_root, split_manifest

log = logging.getLogger("stages.drift_reference")


@exits_cleanly
def main() -> None:
    setup_logging()
    root = repo_root()
    reference = build_reference(read_manifest(root / split_manifest("train")), root)
    write_json(root / DRIFT_REFERENCE, reference.to_dict())
    summary = ", ".join(f"{name} {stats['mean']:.3f}" for name, stats in reference.summary.items())
    log.info("reference of %d training images (means: %s) -> %s", reference.images, summary, DRIFT_REFERENCE)


if __name__ == "__main__":
    main()
