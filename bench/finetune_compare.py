"""Compare fine-tuning settings on the real split: validation picks, test reports.

    python bench/finetune_compare.py --arch efficientnet_lite0 --image-size 128 --epochs 8 \
        --settings frozen full discriminative

Uses the same code as the train and evaluate stages (greenr.model.training.fit, predict_samples,
bootstrap_intervals) on the prepared shards, and prints one row per setting. Run `dvc repro prepare`
first (the shards hold images at model.image_size; other sizes are resized from them). The winner
on validation is what `finetune: auto` should mean
for the arch (greenr/model/architectures.py ARCHS).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from greenr.data.dataset import read_classes
from greenr.data.loader import load_samples
from greenr.evaluation.metrics import bootstrap_intervals
from greenr.model.architectures import build_model, get_arch, resolve_pretrained
from greenr.model.device import configure_threads
from greenr.model.training import fit, predict_samples, seed_everything
from greenr.params import load_section
from greenr.paths import CLASSES_FILE, repo_root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=None, help="default: train.lr from params.yaml")
    parser.add_argument("--pretrained", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="default: train.num_threads")
    parser.add_argument("--settings", nargs="+", default=["frozen", "full", "discriminative"])
    args = parser.parse_args()

    base = load_section("train")
    threads = configure_threads(base.num_threads if args.threads is None else args.threads)
    root = repo_root()
    arch = get_arch(args.arch)
    pretrained = resolve_pretrained(
        arch.name, "auto" if args.pretrained == "auto" else args.pretrained.lower() == "true"
    )
    spec = arch.preprocessing(args.image_size)
    classes = read_classes(root / CLASSES_FILE)
    sets = {name: load_samples(root, [name], classes) for name in ("train", "val", "test")}
    print(
        f"# {arch.name} pretrained={pretrained} {args.image_size}px {args.epochs} epochs, "
        f"{threads} threads, CPU; train/val/test = "
        f"{len(sets['train'])}/{len(sets['val'])}/{len(sets['test'])}"
    )
    print(
        f"{'finetune':<15} {'lr':>7} {'best_ep':>7} {'val_acc':>8} {'val_loss':>8} "
        f"{'test_acc':>8} {'test 95% CI':>15} {'seconds':>8}"
    )
    for setting in args.settings:
        params = base.model_copy(
            update={"finetune": setting, "epochs": args.epochs, "device": "cpu", "lr": args.lr or base.lr}
        )
        seed_everything(params.seed)
        model = build_model(arch.name, len(classes), pretrained=pretrained)
        started = time.perf_counter()
        result = fit(model, arch.name, sets["train"], sets["val"], spec, params, torch.device("cpu"))
        seconds = time.perf_counter() - started
        logits = predict_samples(result.model, sets["test"], spec, torch.device("cpu"), params.batch_size)
        probs = logits.softmax(1).numpy()
        labels = sets["test"].labels
        acc = float((probs.argmax(1) == labels).mean())
        ci = bootstrap_intervals(labels, probs, 1000, 0.95, 0)["accuracy"]
        print(
            f"{setting:<15} {params.lr:>7g} {result.best_epoch:>7d} {result.best.val_acc:>8.4f} "
            f"{result.best.val_loss:>8.4f} {acc:>8.4f} {f'[{ci[0]:.3f}, {ci[1]:.3f}]':>15} "
            f"{seconds:>8.1f}",
            flush=True,
        )


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
