"""The model alone per backend and precision: fp32, bf16 (where the CPU has it) and the INT8 export.

Every candidate the loader could serve (greenr.backends.loading) is built once, then timed in
interleaved rounds (so that background load hits all alike) at batch 1 and batch 16 on the real
photos, decoded as the server decodes them; also their agreement with the reference on the probe
batch. Prints the CPU model with its SIMD flags and the load average before and after: quote only
runs that started below load 1.

    .venv/bin/python bench/precision_bench.py [--model models/stage-1.onnx] [--rounds 5] [--threads 0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.photos import training_photos
from bench.serve_bench import lscpu_model
from greenr.backends.base import FLIP_MARGIN, TOLERANCE, Backend, compare, probe_batch
from greenr.backends.loading import BACKENDS, build, installed
from greenr.backends.model_file import load_model_file, read_int8_companion
from greenr.data.images import load_model_input
from greenr.hardware import BF16_FLAGS, INT8_FLAGS, available_cpus, cpu_flags, native_bf16

BATCHES = (1, 16)


def candidates(onnx: Path, threads: int) -> dict[str, Backend]:
    """Every backend x precision that can run the export (and its INT8 file) here."""
    fp32 = load_model_file(onnx)
    int8, why = read_int8_companion(fp32, onnx, str(onnx))
    if int8 is None:
        print(f"no INT8 rows: {why}")
    built = {}
    for name, info in BACKENDS.items():
        if "onnx" not in info.formats or not installed(name):
            continue
        built[f"{name} fp32"] = build(name, fp32, "fp32", threads)
        if info.bf16 and native_bf16():
            built[f"{name} bf16"] = build(name, fp32, "bf16", threads)
        if int8 is not None:
            certified = name in (int8.spec.quantization or {}).get("backends", [])
            built[f"{name} int8{'' if certified else ' (not certified)'}"] = build(name, int8, "int8", threads)
    return built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/stage-1.onnx")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--passes", type=int, default=5, help="forward passes per timing")
    parser.add_argument("--threads", type=int, default=0, help="backend threads (default: every core available)")
    args = parser.parse_args()
    load_before = os.getloadavg()
    threads = args.threads or available_cpus()
    onnx = (REPO / args.model).resolve()
    backends = candidates(onnx, threads)
    spec = next(iter(backends.values())).spec
    photos = np.stack([load_model_input(p, spec.preprocessing) for p in training_photos()[:16]])
    flags = sorted(cpu_flags() & (BF16_FLAGS | INT8_FLAGS | {"avx2", "avx512f"})) or ["none"]
    print(f"CPU {lscpu_model()}, {threads} threads, flags: {', '.join(flags)}")
    print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")
    times: dict[tuple[str, int], list[float]] = {}
    for backend in backends.values():
        backend.forward(photos)  # warm-up: first calls allocate and tune
    for _ in range(args.rounds):
        for label, backend in backends.items():
            for size in BATCHES:
                batch = photos[:size]
                start = time.perf_counter()
                for _ in range(args.passes):
                    backend.forward(batch)
                times.setdefault((label, size), []).append((time.perf_counter() - start) / args.passes)
    load_after = os.getloadavg()
    reference = spec.reference_logits
    probe = probe_batch(spec.image_size)
    print(f"\n{'backend':34}{'batch 1 ms':>11}{'batch 16 img/s':>16}{'probe max |diff|':>18}{'agrees':>8}")
    for label, backend in backends.items():
        ms1 = statistics.median(times[(label, 1)]) * 1000
        per_s = 16 / statistics.median(times[(label, 16)])
        precision = backend.precision
        agreement = compare(backend.forward(probe), reference, TOLERANCE[precision], FLIP_MARGIN[precision])
        print(f"{label:34}{ms1:>11.2f}{per_s:>16.1f}{agreement.max_abs_diff:>18.3f}{agreement.ok!s:>8}")
    print(f"\nload average before: {load_before[0]:.2f}, after: {load_after[0]:.2f}", end="")
    print("  (a run that started above 1 is not quotable)" if load_before[0] >= 1 else "")


if __name__ == "__main__":
    main()
