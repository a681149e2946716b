"""Is an exported backend worth serving? Eager PyTorch vs TorchScript (trace + freeze) on the CPU.

Same checkpoint, same inputs: prints ms per batch at batch sizes 1 and 16 and the largest
probability difference. The server switches only if it is faster and within 1e-4.

    .venv/bin/python bench/backend_check.py [--model models/stage-1.pth] [--repeat 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from greenr.data.tensors import normalize
from greenr.model import checkpoint


def timed(fn, x: torch.Tensor, repeat: int) -> float:
    fn(x)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="models/stage-1.pth")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    ckpt = checkpoint.load(args.model)
    eager = ckpt.build()
    size = ckpt.image_size
    example = normalize(torch.zeros(16, 3, size, size, dtype=torch.uint8), ckpt.preprocessing)
    scripted = torch.jit.freeze(torch.jit.trace(eager, example))
    for bs in (1, 16):
        gen = torch.Generator().manual_seed(bs)
        x = normalize(torch.randint(0, 256, (bs, 3, size, size), dtype=torch.uint8, generator=gen), ckpt.preprocessing)
        diff = (torch.softmax(eager(x), 1) - torch.softmax(scripted(x), 1)).abs().max().item()
        # Alternate the two, so background load hits both alike.
        e, s = [], []
        for _ in range(3):
            e.append(timed(eager, x, args.repeat))
            s.append(timed(scripted, x, args.repeat))
        me, ms = statistics.median(e), statistics.median(s)
        print(
            f"batch {bs:2d}: eager {me:7.1f} ms  torchscript {ms:7.1f} ms  "
            f"speed-up {me / ms:4.2f}x  max |dp| {diff:.2e}"
        )


if __name__ == "__main__":
    main()
