"""One rank of the data-parallel test, started by torchrun: trains on index-stamped images and
records which examples its forward passes saw, then writes its weights' hash and what it saw."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

from greenr.data.images import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from greenr.model.architectures import build_model
from greenr.model.training import fit, init_distributed, seed_everything
from greenr.params import AugmentParams, TrainParams
from tests.helpers.shards import write_arrays

N_TRAIN = 21  # odd on purpose: the two ranks' shares differ in size
SIZE = 32
CLASSES = ["a", "b"]


STAMP = 8  # the index is stamped as a flat grey 8x8 block (one JPEG block: it survives the encoding)


def stamped_images(n: int, seed: int) -> np.ndarray:
    """Random images whose top-left 8x8 block has the grey level STAMP * index."""
    images = np.random.default_rng(seed).integers(0, 256, (n, 3, SIZE, SIZE), dtype=np.uint8)
    images[:, :, :8, :8] = (np.arange(n, dtype=np.uint8) * STAMP)[:, None, None, None]
    return images


def main() -> None:
    out = Path(sys.argv[1])
    shard = int(sys.argv[2])  # images per shard
    device = torch.device("cpu")
    rank, world = init_distributed(device)
    torch.set_num_threads(1)
    seed_everything(0)
    spec = Preprocessing(image_size=SIZE)
    # Every rank writes the same shards into a folder of its own: ranks need no shared disk.
    data = out / f"data-rank{rank}"
    train = write_arrays(
        data, "train", stamped_images(N_TRAIN, 1), [CLASSES[i % 2] for i in range(N_TRAIN)], CLASSES, shard
    )
    val = write_arrays(data, "val", stamped_images(6, 2), [CLASSES[i % 2] for i in range(6)], CLASSES)
    params = TrainParams(
        epochs=2,
        finetune="full",
        batch_size=8,
        lr=1e-3,
        seed=3,
        optimizer="adam",
        weight_decay=0.0,
        schedule="constant",
        select="best",
        device="cpu",
        augment=AugmentParams(hflip=False, vflip=False, crop_scale_min=1.0, color_jitter=0),
    )
    model = build_model("resnet18", 2)

    seen: list[int] = []

    def record(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        if module.training:  # training batches only, not validation
            x = inputs[0][:, 0, 0, 0].float()
            pixel = x * IMAGENET_STD[0] * 255 + IMAGENET_MEAN[0] * 255
            seen.extend(int(v) for v in (pixel / STAMP).round().tolist())

    model.conv1.register_forward_pre_hook(record)
    result = fit(model, "resnet18", train, val, spec, params, device)
    digest = hashlib.sha256()
    for name, tensor in sorted(result.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    (out / f"rank{rank}.json").write_text(
        json.dumps(
            {
                "rank": rank,
                "world": world,
                "sha256": digest.hexdigest(),
                "seen": seen,
                "history": [s.row() for s in result.history],
            }
        )
    )


if __name__ == "__main__":
    main()
