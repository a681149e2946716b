"""The pipeline at scale: N images made from the 400 photos, through every stage, in a temporary workspace.

    .venv/bin/python bench/scale.py 20000                  # ingest .. export, default params
    .venv/bin/python bench/scale.py 100000 --until prepare # the data stages only
    make bench-scale N=20000

The N images are made from the real photos (deterministically): a random crop of 35-80% of the
area, a mirror, a colour and brightness shift, a resize and a JPEG re-encode at a random quality,
labelled with the source photo's class. Copies of one photo rarely come within the split's
near-duplicate distance of each other; where they do, the split keeps them together.

Per stage it prints wall time, images/s, the peak memory of the stage's process tree (the sum of
the processes' proportional set sizes, PSS: shared pages counted once, as the machine holds them;
and the largest single process's RSS) and, after `dvc add` and `prepare`, how many files DVC
tracks for the data and for the prepared shards. Then the decode ceiling of this machine: PIL
decoding the same files in one process per core (what `prepare` is compared with; prepare also
resizes and re-encodes), the training loader reading every prepared image against PIL decoding the
same shard members in one process per core (the pipeline's decoding against its ceiling),
`dvc status` with nothing changed, and on a CUDA machine the backbone alone on uint8 data already on the GPU.
Load average before and after, CPU model and flags: figures from a busy machine mislead.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
from PIL import Image, ImageEnhance

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.photos import DATA
from greenr.hardware import available_cpus, cpu_flags, cpu_model

STAGES = ("ingest", "dvc add", "split", "prepare", "train", "evaluate", "export")
# Not copied into the workspace: outputs of this checkout's own runs.
OUTPUTS = ("data.dvc", "dvc.lock", "metrics/", "plots/", "splits/", ".dvc/config.local")


# ---------------------------------------------------------------------------- the images


def variant(task: tuple[str, int, str]) -> None:
    """Write one derived image (source path, seed, target path)."""
    source, seed, target = task
    rng = random.Random(seed)
    with Image.open(source) as opened:
        image = opened.convert("RGB")
    width, height = image.size
    area = rng.uniform(0.35, 0.8)
    aspect = rng.uniform(0.75, 1.33)
    w = max(16, min(width, int(round((area * width * height * aspect) ** 0.5))))
    h = max(16, min(height, int(round((area * width * height / aspect) ** 0.5))))
    left, top = rng.randint(0, width - w), rng.randint(0, height - h)
    image = image.crop((left, top, left + w, top + h))
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    image = ImageEnhance.Color(image).enhance(rng.uniform(0.7, 1.3))
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.8, 1.2))
    scale = rng.uniform(0.9, 1.6)
    image = image.resize((max(16, int(w * scale)), max(16, int(h * scale))), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=rng.randint(70, 95))
    Path(target).write_bytes(buffer.getvalue())


def make_source(folder: Path, n: int, workers: int) -> None:
    """`n` images under folder/<class>/, balanced over the source photos, made in `workers` processes."""
    photos = sorted(DATA.glob("*/*.jpg"))
    if not photos:
        raise SystemExit(f"no photos in {DATA}")
    tasks = []
    for i in range(n):
        photo = photos[i % len(photos)]
        label = photo.parent.name
        (folder / label).mkdir(parents=True, exist_ok=True)
        tasks.append((str(photo), i, str(folder / label / f"{i:08d}.jpg")))
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(variant, tasks, chunksize=256))


# ---------------------------------------------------------------------------- measuring


@dataclass
class Peak:
    pss: int = 0  # bytes, summed over the tree
    rss: int = 0  # bytes, the largest single process


def _tree_memory(proc: psutil.Process) -> tuple[int, int]:
    pss = rss = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            info = p.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        pss += getattr(info, "pss", info.rss)
        rss = max(rss, info.rss)
    return pss, rss


def run_measured(cmd: Sequence[str], cwd: Path, env: dict[str, str]) -> tuple[float, Peak]:
    """Run `cmd`, sampling its process tree's memory every 0.2 s; (seconds, peak)."""
    peak = Peak()
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    handle = psutil.Process(proc.pid)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(proc.stdout or []), daemon=True)
    reader.start()
    while proc.poll() is None:
        pss, rss = _tree_memory(handle)
        peak.pss, peak.rss = max(peak.pss, pss), max(peak.rss, rss)
        time.sleep(0.2)
    reader.join()
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.stderr.write("".join(output[-60:]))
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode})")
    return seconds, peak


def decode_one(path: str) -> int:
    with Image.open(path) as image:
        image.load()
        return image.width


def decode_ceiling(files: list[str], workers: int) -> float:
    """Images/s of PIL decoding `files` in one process per core."""
    started = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(decode_one, files, chunksize=256))
    return len(files) / (time.perf_counter() - started)


def _decode_members(task: tuple[str, list[tuple[int, int]], int]) -> int:
    from greenr.data.shards import decode_member

    path, spans, image_size = task
    with open(path, "rb") as shard:
        for offset, size in spans:
            shard.seek(offset)
            decode_member(shard.read(size), image_size)
    return len(spans)


def shard_decoding(workspace: Path, workers: int, image_size: int = 224) -> tuple[float, float, int]:
    """(images/s of the training loader reading every prepared image in batches of 64, images/s of
    PIL decoding the same shard members in one process per core, images): the pipeline's decoding
    against the ceiling of the same work on this machine."""
    import numpy as np

    from greenr.data.dataset import read_classes
    from greenr.data.loader import batches, load_samples
    from greenr.paths import CLASSES_FILE

    samples = load_samples(workspace, ["train", "val", "test"], read_classes(workspace / CLASSES_FILE))
    started = time.perf_counter()
    seen = sum(len(batch.index) for batch in batches(samples, image_size, 64, shuffle=True))
    loader = seen / (time.perf_counter() - started)
    tasks = []
    for start in range(0, len(samples), 256):
        part = samples.subset(np.arange(start, min(start + 256, len(samples))))
        for number in np.unique(part.file_of):
            mine = part.file_of == number
            spans = list(zip(part.offsets[mine].tolist(), part.sizes[mine].tolist(), strict=True))
            tasks.append((str(samples.root / samples.files[number]), spans, image_size))
    started = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        decoded = sum(pool.map(_decode_members, tasks))
    return loader, decoded / (time.perf_counter() - started), seen


def backbone_ceiling(image_size: int = 224, batch: int = 256, steps: int = 20) -> float | None:
    """Images/s of EfficientNet-Lite0 features alone on uint8 data already on a CUDA GPU (bf16)."""
    import torch

    if not torch.cuda.is_available():
        return None
    from greenr.data.tensors import normalize
    from greenr.model.architectures import build_model, get_arch
    from greenr.model.frozen import features_only

    spec = get_arch("efficientnet_lite0").preprocessing(image_size)
    model = build_model("efficientnet_lite0", 2, pretrained=False).cuda().to(memory_format=torch.channels_last)
    x = torch.randint(0, 256, (batch, 3, image_size, image_size), dtype=torch.uint8, device="cuda")
    with features_only(model, "efficientnet_lite0") as backbone, torch.inference_mode():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            for _ in range(3):
                backbone(normalize(x, spec))
            torch.cuda.synchronize()
            started = time.perf_counter()
            for _ in range(steps):
                backbone(normalize(x, spec))
            torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - started)


def tracked_files(workspace: Path, target: str) -> int:
    """Files DVC tracks under `target` (from the .dir listing in its cache)."""
    lock = workspace / ("data.dvc" if target == "data" else "dvc.lock")
    text = lock.read_text()
    marker = text.find(f"path: {target}\n") if target != "data" else 0
    md5 = text[text.find("md5: ", marker) + 5 :].split()[0]
    listing = workspace / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    return len(json.loads(listing.read_text()))


# ---------------------------------------------------------------------------- the run


def workspace_for(root: Path) -> Path:
    """A git + DVC copy of the project's source, without outputs or data."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    for rel in filter(None, listed):
        if rel.startswith(OUTPUTS) or not (REPO / rel).is_file():
            continue
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, root / rel)
    for args in (["init", "-q", "-b", "main"], ["config", "user.email", "bench@example.invalid"]):
        subprocess.run(["git", *args], cwd=root, check=True)
    subprocess.run(["git", "config", "user.name", "bench"], cwd=root, check=True)
    return root


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def print_machine() -> list[str]:
    """Print the CPU line (model, cores, vector flags) and the load average before; returns the flags."""
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx")))
    print(f"CPU: {cpu_model()}, {available_cpus()} cores, flags: {' '.join(flags)}")
    print(f"load average before: {load_average()}", flush=True)
    return flags


def workspace_arguments(parser: argparse.ArgumentParser) -> None:
    """--keep and --json, as every workspace benchmark takes them."""
    parser.add_argument("--keep", type=Path, help="build the workspace here and keep it (default: a temp folder)")
    parser.add_argument("--json", type=Path, help="also write the figures here")


@contextmanager
def bench_workspace(keep: Path | None, prefix: str) -> Iterator[tuple[Path, Path, dict[str, str]]]:
    """(source folder for the images, workspace (`workspace_for`), its environment) under `keep`
    (made if missing), or under a new temporary folder in .state/ that goes afterwards."""
    base = (keep or Path(tempfile.mkdtemp(prefix=prefix, dir=REPO / ".state"))).resolve()
    base.mkdir(parents=True, exist_ok=True)
    try:
        workspace = workspace_for(base / "workspace")
        yield base / "source", workspace, workspace_env(workspace, base / "state")
    finally:
        if keep is None:
            shutil.rmtree(base, ignore_errors=True)


def stage_commands(source: Path) -> dict[str, list[str]]:
    """The command of each of STAGES in a workspace: ingest `source`, `dvc add data`, then each DVC
    stage alone."""
    return {
        "ingest": [str(Path(sys.executable).parent / "greenr"), "ingest", "--source", str(source), "--no-dvc-add"],
        "dvc add": ["dvc", "add", "-q", "data"],
        **{stage: ["dvc", "repro", "--single-item", stage] for stage in STAGES[2:]},
    }


def workspace_env(workspace: Path, state: Path) -> dict[str, str]:
    """The environment for the project's commands in `workspace`: this venv first, offline, its own state."""
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "GREENR_ROOT": str(workspace),
        "GREENR_STATE_DIR": str(state),
        "GREENR_OFFLINE": "1",
        "DVC_NO_ANALYTICS": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }


def timed_status(targets: Sequence[str], workspace: Path, env: dict[str, str]) -> tuple[float, bool]:
    """Seconds `dvc status` takes on these targets, and whether it found nothing changed."""
    started = time.perf_counter()
    done = subprocess.run(["dvc", "status", "-q", *targets], cwd=workspace, env=env, check=False)
    return time.perf_counter() - started, done.returncode == 0


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("n", type=int, help="images to make")
    parser.add_argument("--until", choices=STAGES, default="export", help="last stage to run")
    workspace_arguments(parser)
    args = parser.parse_args(argv)

    workers = available_cpus()
    flags = print_machine()
    results: dict[str, dict[str, float]] = {}
    with bench_workspace(args.keep, "greenr-scale-") as (source, workspace, env):
        started = time.perf_counter()
        make_source(source, args.n, workers)
        print(f"made {args.n} images in {time.perf_counter() - started:.0f} s")
        commands = stage_commands(source)
        print(f"{'stage':<10} {'seconds':>9} {'images/s':>9} {'peak PSS':>10} {'max RSS':>9}  notes")
        for stage in STAGES:
            seconds, peak = run_measured(commands[stage], workspace, env)
            note = ""
            if stage == "dvc add":
                note = f"DVC tracks {tracked_files(workspace, 'data')} files in data/"
            elif stage == "prepare":
                note = f"DVC tracks {tracked_files(workspace, 'shards')} files in shards/"
            results[stage] = {
                "seconds": round(seconds, 1),
                "images_per_second": round(args.n / seconds, 1),
                "peak_pss_mib": round(peak.pss / 2**20),
                "max_rss_mib": round(peak.rss / 2**20),
            }
            print(
                f"{stage:<10} {seconds:>9.1f} {args.n / seconds:>9.0f} {peak.pss / 2**30:>8.2f} G "
                f"{peak.rss / 2**30:>7.2f} G  {note}",
                flush=True,
            )
            if stage == args.until:
                break
        # Only what ran: a stage after --until is "changed" and would be timed as such.
        ran = [s for s in STAGES[2:] if s in results]
        status, unchanged = timed_status(["data.dvc", *ran], workspace, env)
        status_data, _ = timed_status(["data.dvc"], workspace, env)
        files = [str(p) for p in sorted(source.rglob("*.jpg"))]
        ceiling = decode_ceiling(files, workers)
        prepare = results.get("prepare", {}).get("images_per_second")
        print(
            f"dvc status of data.dvc and {', '.join(ran)}: {status:.1f} s, "
            + ("nothing changed" if unchanged else "SOMETHING CHANGED")
            + f"; data.dvc alone: {status_data:.1f} s"
        )
        print(
            f"decode ceiling (PIL, {workers} processes, the same files): {ceiling:.0f} images/s"
            + (f"; prepare reaches {prepare / ceiling:.2f} of it" if prepare else "")
        )
        results["dvc_status"] = {
            "seconds": round(status, 1),
            "unchanged": unchanged,
            "data_dvc_seconds": round(status_data, 1),
        }
        results["decode_ceiling"] = {"images_per_second": round(ceiling, 1)}
        if prepare:
            loader, members, count = shard_decoding(workspace, workers)
            print(
                f"training loader on the shards: {loader:.0f} images/s ({count} images); PIL decoding the same "
                f"members in {workers} processes: {members:.0f} images/s; the loader reaches {loader / members:.2f}"
            )
            results["shard_decoding"] = {
                "loader_images_per_second": round(loader, 1),
                "ceiling_images_per_second": round(members, 1),
                "share": round(loader / members, 3),
            }
        backbone = backbone_ceiling()
        if backbone is not None:
            print(f"backbone ceiling (Lite0 features, bf16, batch 256, data on the GPU): {backbone:.0f} images/s")
            results["backbone_ceiling"] = {"images_per_second": round(backbone, 1)}
    print(f"load average after: {load_average()}")
    if args.json:
        args.json.write_text(
            json.dumps({"n": args.n, "cpu": cpu_model(), "cores": workers, "flags": flags, "stages": results}, indent=2)
        )


if __name__ == "__main__":
    main()
