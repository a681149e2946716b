"""The fine-tuning recipes on a four-class set built from the 400 photos, through the real pipeline.

    .venv/bin/python bench/recipe_study.py                       # frozen top discriminative full auto
    .venv/bin/python bench/recipe_study.py --settings frozen auto --json out.json

The set: each photo and a greyscale copy of it, as four classes (`dandelion`, `dandelion_grey`,
`grass`, `grass_grey`; 800 images, all re-encoded at JPEG quality 90 so that the encoding tells
no class apart). A photo and its copy share a perceptual hash, so the split keeps them on the same
side. Colour against greyscale is a difference the frozen recipe's colour jitter blurs, so this is
a set where training more of the backbone can pay.

In a temporary git + DVC copy of the project: ingest, `dvc add data`, split and prepare once; then
for each setting, `train.finetune` is set in params.yaml and `dvc repro --single-item train`, then
`evaluate`, run. Per setting it prints the train stage's wall time (and its multiple of `frozen`'s,
the first setting), its peak memory, the pick and evidence of `auto`, and the test accuracy with
its bootstrap interval. CPU model, flags and load average before and after: times from a busy
machine mislead; accuracy does not depend on load.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.photos import training_photos
from bench.scale import bench_workspace, load_average, print_machine, run_measured, stage_commands, workspace_arguments
from greenr.hardware import available_cpus, cpu_model
from greenr.paths import EVALUATE_METRICS, TRAIN_METRICS, split_manifest

SETTINGS = ("frozen", "top", "discriminative", "full", "auto")
QUALITY = 90


def make_four_classes(folder: Path) -> int:
    """Write the four-class set under `folder`; returns the number of images."""
    count = 0
    for photo in training_photos():
        with Image.open(photo) as opened:
            colour = opened.convert("RGB")
        for suffix, image in (("", colour), ("_grey", colour.convert("L").convert("RGB"))):
            target = folder / f"{photo.parent.name}{suffix}" / photo.name
            target.parent.mkdir(parents=True, exist_ok=True)
            image.save(target, "JPEG", quality=QUALITY)
            count += 1
    return count


def set_finetune(params: Path, setting: str) -> None:
    """Set `train.finetune` in params.yaml, keeping the file's layout and comments."""
    text = params.read_text()
    edited, n = re.subn(r"^(  finetune: )\S+", rf"\g<1>{setting}", text, count=1, flags=re.MULTILINE)
    if n != 1:
        raise SystemExit(f"no `  finetune:` line in {params}")
    params.write_text(edited)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    workspace_arguments(parser)
    args = parser.parse_args(argv)

    flags = print_machine()
    rows: dict[str, dict[str, object]] = {}
    with bench_workspace(args.keep, "greenr-recipes-") as (source, workspace, env):
        print(f"made {make_four_classes(source)} images in 4 classes", flush=True)
        commands = stage_commands(source)
        for stage in ("ingest", "dvc add", "split", "prepare"):
            run_measured(commands[stage], workspace, env)
        sizes = {s: len((workspace / split_manifest(s)).read_text().splitlines()) - 1 for s in ("train", "val", "test")}
        print(f"split train/val/test = {sizes['train']}/{sizes['val']}/{sizes['test']}")
        print(f"{'finetune':<15} {'train s':>8} {'x first':>8} {'peak PSS':>9} {'kept':>8} {'test acc':>9}  interval")
        first: float | None = None
        for setting in args.settings:
            set_finetune(workspace / "params.yaml", setting)
            seconds, peak = run_measured(commands["train"], workspace, env)
            run_measured(commands["evaluate"], workspace, env)
            first = first or seconds
            train = json.loads((workspace / TRAIN_METRICS).read_text())
            evaluation = json.loads((workspace / EVALUATE_METRICS).read_text())
            low, high = evaluation["bootstrap"]["accuracy"]
            rows[setting] = {
                "train_seconds": round(seconds, 1),
                "x_first": round(seconds / first, 2),
                "peak_pss_mib": round(peak.pss / 2**20),
                "kept": train["finetune"],
                "finetune_auto": train.get("finetune_auto"),
                "val_loss": train["val_loss"],
                "test_accuracy": evaluation["accuracy"],
                "test_interval": [low, high],
                "test_macro_f1": evaluation["macro"]["f1"],
            }
            print(
                f"{setting:<15} {seconds:>8.1f} {seconds / first:>8.2f} {peak.pss / 2**30:>7.2f} G "
                f"{train['finetune']:>8} {evaluation['accuracy']:>9.4f}  [{low:.3f}, {high:.3f}]",
                flush=True,
            )
            if train.get("finetune_auto"):
                print(f"  auto: {json.dumps(train['finetune_auto']['tried'])}", flush=True)
    print(f"load average after: {load_average()}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"cpu": cpu_model(), "cores": available_cpus(), "flags": flags, "split": sizes, "settings": rows},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
