"""One rank of the data-parallel test, started by torchrun: trains on index-stamped images and
records which examples its forward passes saw, then writes its weights' hash and what it saw."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

from greenr.data.images import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from greenr.data.tensors import TensorDataset
from greenr.model.architectures import build_model
from greenr.model.training import fit, init_distributed, seed_everything
from greenr.params import AugmentParams, TrainParams

N_TRAIN = 21  # odd on purpose: the two shards differ in size
SIZE = 32


def stamped_images(n: int, seed: int) -> torch.Tensor:
    """Random images whose top-left red pixel is the example's index."""
    images = torch.randint(0, 256, (n, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    return images


def main() -> None:
    out = Path(sys.argv[1])
    device = torch.device("cpu")
    rank, world = init_distributed(device)
    torch.set_num_threads(1)
    seed_everything(0)
    spec = Preprocessing(image_size=SIZE)
    train = TensorDataset(stamped_images(N_TRAIN, 1), torch.arange(N_TRAIN) % 2, [f"t{i}" for i in range(N_TRAIN)])
    val = TensorDataset(stamped_images(6, 2), torch.arange(6) % 2, [f"v{i}" for i in range(6)])
    params = TrainParams(
        epochs=2,
        finetune="full",
        batch_size=8,
        lr=1e-3,
        seed=3,
        device="cpu",
        augment=AugmentParams(hflip=False, vflip=False, crop_scale_min=1.0, color_jitter=0),
    )
    model = build_model("resnet18", 2)

    seen: list[int] = []

    def record(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        if module.training:  # training batches only, not validation
            x = inputs[0][:, 0, 0, 0].float()
            pixel = x * IMAGENET_STD[0] * 255 + IMAGENET_MEAN[0] * 255
            seen.extend(int(v) for v in pixel.round().tolist())

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
