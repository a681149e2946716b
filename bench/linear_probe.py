"""How separable are the frozen backbone's features? A logistic-regression probe per image size.

    python bench/linear_probe.py --sizes 128 224

Embeds splits/{train,val,test}.csv once per size with the pretrained backbone (eval mode, no
augmentation), fits scikit-learn's LogisticRegression on train for a few regularisation
strengths and prints val and test accuracy. Cheap (seconds per size), so it says whether a
larger input is worth a full training run before one is spent on it. Run `python -m stages.split`
first.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from greenr.data.dataset import CLASSES, read_manifest
from greenr.data.tensors import load_tensors, normalize
from greenr.model.architectures import build_model, get_arch
from greenr.model.device import configure_threads
from greenr.paths import SPLITS_DIR, repo_root


@torch.inference_mode()
def embed(backbone: torch.nn.Module, images: torch.Tensor, spec, batch_size: int = 64) -> np.ndarray:
    return torch.cat(
        [backbone(normalize(images[i : i + batch_size], spec)) for i in range(0, len(images), batch_size)]
    ).numpy()


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
    backbone = build_model(arch.name, len(CLASSES), pretrained=True).eval()
    # The head is everything under the arch's head prefix; replacing it leaves pooled features.
    setattr(backbone, arch.head_prefix.rstrip("."), torch.nn.Identity())
    print(f"# {arch.name} ImageNet features, logistic regression, {threads} threads, CPU")
    print(f"{'size':>5} {'C':>6} {'train':>6} {'val':>6} {'test':>6} {'embed_s':>8}")
    for size in args.sizes:
        spec = arch.preprocessing(size)
        started = time.perf_counter()
        feats = {}
        for name in ("train", "val", "test"):
            data = load_tensors(read_manifest(root / SPLITS_DIR / f"{name}.csv"), root, spec)
            feats[name] = (embed(backbone, data.images, spec), data.labels.numpy())
        seconds = time.perf_counter() - started
        for c in args.c:
            clf = LogisticRegression(C=c, max_iter=5000).fit(*feats["train"])
            acc = {name: float((clf.predict(x) == y).mean()) for name, (x, y) in feats.items()}
            print(
                f"{size:>5} {c:>6g} {acc['train']:>6.3f} {acc['val']:>6.3f} {acc['test']:>6.3f} {seconds:>8.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
