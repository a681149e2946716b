"""Training throughput (images/s), side by side in one process:

  (a) pure compute  - forward + backward + optimizer step on in-memory float tensors
  (a16)             - (a) as train.precision bf16 runs it (channels_last, bf16 autocast)
  (b) train stage   - `greenr.model.training.train_one_epoch` over shards made once
                      (`greenr.data.shards.prepare_split`, read by `greenr.data.loader`), with
                      the augmentation from params.yaml
  (c) original      - torchvision ImageFolder + Resize/ToTensor/Normalize + DataLoader,
                      decoding every image every epoch (num_workers 0 and 2)
  (p) prep only     - augment + normalize of (b) without the model: where (b) loses to (a)

Measurements are interleaved (a, b, c0, c2, p, a, b, ...) and repeated, and medians are
reported, because other processes on a shared machine make any single figure noisy.

    .venv/bin/python bench/train_throughput.py --data ../shared/datasets/dandelion-grass
"""

from __future__ import annotations

import argparse
import atexit
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from greenr.data.dataset import Example as Row
from greenr.data.dataset import discover_classes, list_class_images
from greenr.data.loader import batches, load_samples
from greenr.data.shards import Recipe, prepare_split
from greenr.data.tensors import normalize
from greenr.hardware import cpu_flags, cpu_model, native_bf16
from greenr.model.architectures import build_model, get_arch, resolve_finetune, resolve_pretrained
from greenr.model.device import configure_threads, resolve_device
from greenr.model.training import augment, make_optimizer, train_one_epoch
from greenr.params import load_section

ORDER = ("a", "a16", "b", "c0", "c2", "p")
LABELS = {
    "a": "(a) pure compute: fwd+bwd+step on in-memory tensors",
    "a16": "(a16) (a) in bf16 autocast + channels_last (precision: bf16)",
    "b": "(b) train stage: train_one_epoch on cached uint8 + augment",
    "c0": "(c) original: ImageFolder + DataLoader, num_workers=0",
    "c2": "(c) original: ImageFolder + DataLoader, num_workers=2",
    "p": "(p) augment + normalize only (no model)",
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(run: Callable[[], int], device: torch.device) -> float:
    """Images per second of one call of `run` (which returns how many images it processed)."""
    sync(device)
    started = time.perf_counter()
    images = run()
    sync(device)
    return images / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=ROOT.parent / "shared" / "datasets" / "dandelion-grass",
        help="a folder with one sub-folder per class (real images)",
    )
    parser.add_argument("--image-size", type=int, default=None, help="default: model.image_size in params.yaml")
    parser.add_argument("--batch-size", type=int, default=None, help="default: train.batch_size in params.yaml")
    parser.add_argument("--steps", type=int, default=8, help="timed batches per measurement (about one epoch)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches before the first measurement")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = every core we may use)")
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--skip", default="", help="comma-separated measurements to leave out, e.g. c2")
    args = parser.parse_args()

    from torchvision import datasets, transforms

    model_params, train_params = load_section("model"), load_section("train")
    image_size = args.image_size or model_params.image_size
    batch_size = args.batch_size or train_params.batch_size
    # `auto` means the arch's default; resolved here as stages/train.py does.
    pretrained = resolve_pretrained(model_params.arch, model_params.pretrained)
    train_params = train_params.model_copy(
        update={
            "batch_size": batch_size,
            "finetune": resolve_finetune(model_params.arch, pretrained, train_params.finetune),
        }
    )
    arch = get_arch(model_params.arch)
    spec = arch.preprocessing(image_size)
    device = resolve_device(args.device)
    threads = configure_threads(args.threads)
    per_measure = args.steps * batch_size
    methods = [m for m in ORDER if m not in {s.strip() for s in args.skip.split(",") if s.strip()}]

    simd = sorted(f for f in cpu_flags() if f.startswith(("avx512", "amx")) or f in ("avx2", "avx_vnni"))
    print(f"CPU: {cpu_model()}; flags: {' '.join(simd) or 'none of avx2/avx512/amx'}")
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, device {device}, "
        f"{threads} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    print(
        f"{arch.name} at {image_size} px, batch {batch_size}, {args.steps} timed batches "
        f"({per_measure} images) per measurement, {args.repeats} interleaved rounds; "
        f"augment {train_params.augment.model_dump()}"
    )

    # The pipeline's one-time cost (stage `prepare`): decode, resize and pack every image once.
    classes = discover_classes(args.data)
    rows = [
        Row(p.relative_to(args.data).as_posix(), label, "")
        for label, files in list_class_images(args.data, classes).items()
        for p in files
    ]
    (ROOT / ".state").mkdir(exist_ok=True)
    prepared = Path(tempfile.mkdtemp(prefix="bench-shards-", dir=ROOT / ".state"))
    atexit.register(shutil.rmtree, prepared, True)
    started = time.perf_counter()
    prepare_split(prepared / "shards", "train", rows, args.data, Recipe(image_size, 95), 1000)
    decode_seconds = time.perf_counter() - started
    cache = load_samples(prepared, ["train"], classes)
    print(
        f"prepared {len(cache)} images once in {decode_seconds:.1f}s ({len(cache) / decode_seconds:.0f} img/s) for (b)"
    )
    first = next(iter(batches(cache, image_size, batch_size)))
    generator = torch.Generator().manual_seed(0)

    def fresh_model() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        model = build_model(arch.name, 2, pretrained=False).to(device).train()
        return model, make_optimizer(model, arch.name, train_params)

    # (a) one fixed normalised batch, already on the device, channels_last as in training.
    compute_model, compute_opt = fresh_model()
    fixed_x = normalize(first.images.to(device), spec)
    fixed_y = first.labels.to(device)

    def step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def run_a(batches: int = args.steps) -> int:
        for _ in range(batches):
            step(compute_model, compute_opt, fixed_x, fixed_y)
        return batches * batch_size

    # (a16) the same step as train.precision bf16 runs it: NHWC weights and input, bf16 autocast.
    bf16_model, bf16_opt = fresh_model()
    bf16_model.to(memory_format=torch.channels_last)
    bf16_x = fixed_x.contiguous(memory_format=torch.channels_last)

    def run_a16(batches: int = args.steps) -> int:
        for _ in range(batches):
            with torch.autocast(device.type, dtype=torch.bfloat16):
                logits = bf16_model(bf16_x)
            loss = F.cross_entropy(logits.float(), fixed_y)
            bf16_opt.zero_grad(set_to_none=True)
            loss.backward()
            bf16_opt.step()
        return batches * batch_size

    # (b) the stage's own loop over a random subset of the cache of `per_measure` images.
    stage_model, stage_opt = fresh_model()

    def run_b(batches: int = args.steps) -> int:
        pick = torch.randperm(len(cache), generator=generator)[: batches * batch_size]
        subset = cache.subset(pick.numpy())
        train_one_epoch(stage_model, subset, spec, train_params, arch.name, stage_opt, device, 1, generator)
        return len(subset)

    # (c) the original approach: decode + resize + normalise every image, every epoch.
    folder = datasets.ImageFolder(
        str(args.data),
        transform=transforms.Compose(
            [
                transforms.Resize((image_size, image_size)),
                transforms.ToTensor(),
                transforms.Normalize(spec.mean, spec.std),
            ]
        ),
    )
    original_model, original_opt = fresh_model()

    def run_c(workers: int, batches: int = args.steps) -> int:
        loader = torch.utils.data.DataLoader(
            folder, batch_size=batch_size, shuffle=True, num_workers=workers, generator=generator
        )
        done = 0
        for x, y in loader:  # a new iterator per epoch, as a training script makes one
            x = x.to(device).contiguous(memory_format=torch.channels_last)
            step(original_model, original_opt, x, y.to(device))
            done += len(y)
            if done >= batches * batch_size:
                break
        return done

    # (p) the prep of (b) on one decoded batch, repeated: augment + normalize only.
    def run_p(batches: int = args.steps) -> int:
        for _ in range(batches):
            normalize(augment(first.images.to(device), train_params.augment, generator), spec)
        return batches * len(first.images)

    runners: dict[str, Callable[..., int]] = {
        "a": run_a,
        "a16": run_a16,
        "b": run_b,
        "c0": lambda **kw: run_c(0, **kw),
        "c2": lambda **kw: run_c(2, **kw),
        "p": run_p,
    }
    for name in methods:  # warm-up: allocator, oneDNN primitives, page cache, worker start
        runners[name](batches=args.warmup)

    results: dict[str, list[float]] = {name: [] for name in methods}
    for round_no in range(1, args.repeats + 1):
        for name in methods:
            results[name].append(timed(runners[name], device))
        print(f"round {round_no}: " + ", ".join(f"{n} {results[n][-1]:.1f}" for n in methods), flush=True)

    medians = {name: statistics.median(values) for name, values in results.items()}
    print()
    print(f"{'measurement':<60} {'median img/s':>12} {'min':>8} {'max':>8}")
    for name in methods:
        print(f"{LABELS[name]:<60} {medians[name]:>12.1f} {min(results[name]):>8.1f} {max(results[name]):>8.1f}")
    print()
    if {"a", "b"} <= medians.keys():
        ratio = medians["b"] / medians["a"]
        paired = statistics.median(b / a for a, b in zip(results["a"], results["b"]))
        print(
            f"(b)/(a)  train stage vs pure compute: {ratio:.3f}  (target >= 0.9: "
            f"{'met' if ratio >= 0.9 else 'NOT met'}); median of per-round ratios {paired:.3f}"
        )
    if {"a", "a16"} <= medians.keys():
        native = (
            "native" if native_bf16() or device.type == "cuda" else "EMULATED (no AMX/AVX512-BF16: auto stays fp32)"
        )
        print(f"(a16)/(a) bf16 + channels_last vs fp32: {medians['a16'] / medians['a']:.2f}x  [{native}]")
    for workers in ("c0", "c2"):
        if {"b", workers} <= medians.keys():
            print(
                f"(b)/{workers:<4} train stage vs original ({LABELS[workers][-13:]}): "
                f"{medians['b'] / medians[workers]:.2f}x"
            )
    if {"a", "p"} <= medians.keys():
        # Per image, (b) should cost about (a) + (p): the share that is not the model.
        share = (1 / medians["p"]) / (1 / medians["a"] + 1 / medians["p"])
        print(
            f"augment + normalize would be {share:.1%} of a (b) step "
            f"({1000 * batch_size / medians['p']:.0f} ms per batch vs "
            f"{1000 * batch_size / medians['a']:.0f} ms of model compute)"
        )


if __name__ == "__main__":
    main()
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (quote only runs that started quiet)")
