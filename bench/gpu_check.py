"""The CUDA path against its ceilings, on a GPU machine (the `device` tool): one short run.

    python3 bench/gpu_check.py --images 12000 --out results.json

Makes photo-like images (smooth random fields with blobs, two classes), prepares them into shards
with the prepare stage's code (one process per core) and measures, side by side in one run:

- decode: `prepare` against PIL decoding the same files in one process per core;
- frozen feature extraction (`greenr.model.frozen.extract`, EfficientNet-Lite0 at 224 px, 10 views,
  bf16, batch 256, CPU worker decoding; and with nvJPEG) against the backbone alone on uint8 data
  already on the GPU (forward passes per second);
- ResNet18 `train_one_epoch` (224 px, batch 256, bf16, channels_last) against a bare bf16 loop of
  the same network on data already on the GPU;
- nvJPEG against libjpeg on the shards' bytes: the largest and the mean pixel difference.

Random weights everywhere: speed does not depend on them, and the machine has no network.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.scale import backbone_ceiling, decode_ceiling
from greenr.data.dataset import Example
from greenr.data.loader import batches, decode_on_gpu, load_samples
from greenr.data.shards import Recipe, decode_member, iter_members, prepare_split
from greenr.data.tensors import normalize
from greenr.hardware import available_cpus
from greenr.model import frozen
from greenr.model.architectures import build_model, get_arch
from greenr.model.training import make_optimizer, train_one_epoch
from greenr.params import AugmentParams, TrainParams

CLASSES = ["blobs", "field"]


def synthetic(task: tuple[int, str]) -> None:
    """A 320x240 photo-like JPEG: a smooth random colour field, with yellow blobs for `blobs`."""
    seed, target = task
    rng = np.random.default_rng(seed)
    low = rng.uniform(0, 255, (6, 8, 3))
    image = np.asarray(Image.fromarray(low.astype(np.uint8)).resize((320, 240), Image.Resampling.BICUBIC), float)
    if "blobs" in target:
        yy, xx = np.mgrid[0:240, 0:320]
        for _ in range(rng.integers(2, 6)):
            cy, cx, r = rng.uniform(20, 220), rng.uniform(20, 300), rng.uniform(10, 40)
            image[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = (240, 210, 30)
    image += rng.normal(0, 8, image.shape)
    buffer = io.BytesIO()
    Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    Path(target).write_bytes(buffer.getvalue())


def cuda_rate(work, count: int, repeats: int = 1) -> float:
    """Items per second of `work()` (which processes `count` items), synchronised."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    work()  # warm-up: cuDNN autotuning, allocator, worker start
    sync()
    started = time.perf_counter()
    for _ in range(repeats):
        work()
    sync()
    return count * repeats / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=12000)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--device", default="cuda", help="cpu: a quick smoke run of this script itself")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    assert torch.cuda.is_available() or not cuda, "no CUDA device"
    cores = available_cpus()
    results: dict[str, object] = {
        "gpu": torch.cuda.get_device_name() if cuda else "none",
        "torch": torch.__version__,
        "cores": cores,
        "load_before": os.getloadavg(),
    }
    print(json.dumps(results), flush=True)
    root = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    tasks = [(i, str(root / "data" / CLASSES[i % 2] / f"{i:07d}.jpg")) for i in range(args.images)]
    for label in CLASSES:
        (root / "data" / label).mkdir(parents=True)
    with ProcessPoolExecutor(cores) as pool:
        list(pool.map(synthetic, tasks, chunksize=64))
    files = [target for _, target in tasks]

    rows = [Example(Path(t).relative_to(root).as_posix(), Path(t).parent.name, f"{i:032x}") for i, t in tasks]
    started = time.perf_counter()
    prepare_split(root / "shards", "train", rows, root, Recipe(224, 95), 1000, workers=cores)
    prepare_rate = len(rows) / (time.perf_counter() - started)
    ceiling = decode_ceiling(files, cores)
    results["prepare_images_per_s"] = round(prepare_rate)
    results["decode_ceiling_images_per_s"] = round(ceiling)
    print(
        f"prepare {prepare_rate:.0f} img/s (decode+resize+encode) vs PIL decode alone {ceiling:.0f} img/s", flush=True
    )

    samples = load_samples(root, ["train"], CLASSES)
    spec = get_arch("efficientnet_lite0").preprocessing(224)
    backbone = backbone_ceiling(224, 256) or float("nan")
    views = frozen.training_views(8)
    lite = build_model("efficientnet_lite0", 2, pretrained=False).to(memory_format=torch.channels_last)
    for gpu_decode in (False, True) if cuda else (False,):

        def extract(gpu_decode: bool = gpu_decode) -> None:
            frozen.extract(
                lite, "efficientnet_lite0", samples, spec, views, AugmentParams(), 0, device,
                {"frozen": root / "features.npy"}, 256, cuda, gpu_decode,
            )  # fmt: skip

        passes = cuda_rate(extract, len(samples) * len(views))
        key = "extract_gpu_decode" if gpu_decode else "extract"
        results[f"{key}_passes_per_s"] = round(passes)
        print(f"{key}: {passes:.0f} forward passes/s = {passes / backbone:.2f} of the backbone alone", flush=True)
    results["backbone_ceiling_images_per_s"] = round(backbone) if cuda else None

    # ResNet18: the pipeline's epoch against a bare bf16 loop on data already on the GPU.
    params = TrainParams(
        finetune="full", batch_size=256, precision="bf16" if cuda else "fp32", device=args.device, lr=1e-3
    )
    resnet_spec = get_arch("resnet18").preprocessing(224)
    model = build_model("resnet18", 2).to(device).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, "resnet18", params)
    generator = torch.Generator().manual_seed(0)
    stage = cuda_rate(
        lambda: train_one_epoch(
            model, samples, resnet_spec, params, "resnet18", optimizer, device, 1, generator, None, cuda
        ),
        len(samples),
    )
    x = torch.randint(0, 256, (256, 3, 224, 224), dtype=torch.uint8, device=device)
    y = torch.randint(0, 2, (256,), device=device)
    bare_model = build_model("resnet18", 2).to(device).to(memory_format=torch.channels_last).train()
    bare_opt = torch.optim.AdamW(bare_model.parameters(), lr=1e-3)

    steps = 40 if cuda else 1

    def bare() -> None:
        for _ in range(steps):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                loss = torch.nn.functional.cross_entropy(bare_model(normalize(x, resnet_spec)).float(), y)
            bare_opt.zero_grad(set_to_none=True)
            loss.backward()
            bare_opt.step()

    loop = cuda_rate(bare, steps * 256)
    results["resnet18_fit_images_per_s"], results["resnet18_bare_images_per_s"] = round(stage), round(loop)
    print(f"resnet18 train_one_epoch {stage:.0f} img/s vs bare bf16 loop {loop:.0f} img/s: {stage / loop:.2f}")

    if cuda:
        nvjpeg_agreement(root, device, samples, results)
    results["load_after"] = os.getloadavg()
    print(json.dumps(results, indent=1))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


def nvjpeg_agreement(root: Path, device: torch.device, samples, results: dict) -> None:
    """nvJPEG against libjpeg on the same shard bytes."""
    worst, total, count = 0, 0.0, 0
    for _member, data in iter_members(root / "shards", "train"):
        cpu = torch.from_numpy(decode_member(data, 224)).int()
        gpu = decode_on_gpu([torch.frombuffer(bytearray(data), dtype=torch.uint8)], 224, device)[0].cpu().int()
        diff = (cpu - gpu).abs()
        worst, total, count = max(worst, int(diff.max())), total + float(diff.float().mean()), count + 1
        if count == 500:
            break
    results["nvjpeg_max_abs_diff"], results["nvjpeg_mean_abs_diff"] = worst, round(total / count, 4)
    print(f"nvJPEG vs libjpeg on {count} images: max |diff| {worst}, mean {total / count:.3f} grey levels")
    first = next(iter(batches(samples, 224, 64, gpu_decode=device)))
    assert first.images.device.type == "cuda" and first.images.shape == (64, 3, 224, 224)


if __name__ == "__main__":
    main()
