"""How separable are the frozen backbone's features? A logistic-regression probe per image size.

    python bench/linear_probe.py --sizes 128 224

Embeds the prepared train, val and test shards once per size with the pretrained backbone (eval
mode, no augmentation: the frozen recipe's extraction code, greenr.model.frozen.extract), fits
scikit-learn's LogisticRegression on train for a few regularisation strengths and prints val and
test accuracy. It is the yardstick of the frozen recipe on any data set: the head the pipeline
trains should come within a point or two of the best probe. Run `dvc repro prepare` first.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from greenr.data.dataset import read_classes
from greenr.data.loader import load_samples
from greenr.model import frozen
from greenr.model.architectures import build_model, get_arch
from greenr.model.device import configure_threads
from greenr.params import AugmentParams
from greenr.paths import CLASSES_FILE, repo_root, state_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="efficientnet_lite0")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    parser.add_argument(
        "--c", type=float, nargs="+", default=[0.01, 0.1, 1.0, 10.0], help="inverse L2 strengths to try"
    )
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()

    threads = configure_threads(args.threads)
    root = repo_root()
    arch = get_arch(args.arch)
    classes = read_classes(root / CLASSES_FILE)
    model = build_model(arch.name, len(classes), pretrained=True)
    print(f"# {arch.name} ImageNet features, logistic regression, {threads} threads, CPU")
    print(f"{'size':>5} {'C':>6} {'train':>6} {'val':>6} {'test':>6} {'embed_s':>8}")
    for size in args.sizes:
        spec = arch.preprocessing(size)
        started = time.perf_counter()
        feats = {}
        with tempfile.TemporaryDirectory(dir=state_dir()) as folder:
            for name in ("train", "val", "test"):
                data = load_samples(root, [name], classes)
                bank = frozen.extract(
                    model,
                    arch.name,
                    data,
                    spec,
                    ["centre"],
                    AugmentParams(),
                    0,
                    torch.device("cpu"),
                    {"frozen": Path(folder) / name},
                )["frozen"]
                feats[name] = (np.asarray(bank.array[:, 0], dtype=np.float32), data.labels)
        seconds = time.perf_counter() - started
        scores = []
        for c in args.c:
            clf = LogisticRegression(C=c, max_iter=5000).fit(*feats["train"])
            acc = {name: float((clf.predict(x) == y).mean()) for name, (x, y) in feats.items()}
            scores.append((acc["val"], -c, acc["test"]))
            print(
                f"{size:>5} {c:>6g} {acc['train']:>6.3f} {acc['val']:>6.3f} {acc['test']:>6.3f} {seconds:>8.1f}",
                flush=True,
            )
        val, neg_c, test = max(scores)  # C chosen on val (ties: the stronger regularisation), never on test
        print(f"{size:>5} chosen by val: C={-neg_c:g}, val {val:.3f}, test {test:.3f}", flush=True)


if __name__ == "__main__":
    main()
