"""Soak: the real server under a long, mixed load; errors, latency and memory over time.

Starts `python -m serve` on 127.0.0.1 (a free port), then sends N requests (default 10,000) at
concurrency C (default 16) to POST /predict, mixing good photos (the real images if found, and
the test suite's corpus of formats and modes), phone-size photos (12 MP JPEGs, about 3 MB) and
the bad-input corpus (truncated, not an image, unsupported formats, decompression bombs, over
the size limit). Prints, for every window of requests (default 1,000): p50 and p99 latency,
the answers that were not 2xx by status, answers other than the one expected for that input,
and the server's RSS. At the end: totals, 5xx count (goal 0) and RSS growth after the first
window (goal under 50 MiB), the CPU model and the load average before and after.

    .venv/bin/python bench/soak.py                       # the full run (quiet machine)
    .venv/bin/python bench/soak.py --requests 300 --window 100   # a smoke run

The corpus is the one tests/serve uses (greenr.data.upload_corpus), so the soak and the tests
send the same hostile inputs. Exit status 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import io
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.serve_bench import ensure_models
from greenr.data.upload_corpus import bad_corpus, encode, good_corpus
from greenr.processes import ServerProcess

MAX_UPLOAD = 10 * 1024 * 1024  # the server's default MAX_UPLOAD_BYTES
PHONE_SIZES = ((4032, 3024), (3024, 4032))
RSS_GOAL_MIB = 50


def pct(values: list[float], q: float) -> float:
    """The q-quantile of `values` (nearest rank); NaN when empty."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


@dataclass(frozen=True)
class Upload:
    kind: str  # good, phone, bad
    name: str
    data: bytes
    content_type: str
    expected: int


def real_photos(folder: Path, count: int) -> list[bytes]:
    found = sorted(folder.glob("*/*.jpg"))[:count] if folder.is_dir() else []
    return [path.read_bytes() for path in found]


def phone_photo(size: tuple[int, int], seed: int, source: bytes | None) -> bytes:
    """A 12 MP JPEG: a real photo scaled up when there is one (phone-like size and entropy)."""
    import numpy as np
    from PIL import Image

    if source is not None:
        img = Image.open(io.BytesIO(source)).convert("RGB").resize(size, Image.Resampling.BICUBIC)
    else:
        rng = np.random.default_rng(seed)
        small = rng.integers(0, 255, (size[1] // 64, size[0] // 64, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
    return encode(img, "JPEG", quality=92)


def build_mix(photos_dir: Path) -> dict[str, list[Upload]]:
    photos = real_photos(photos_dir, 40)
    good = [Upload("good", f"photo{i}", data, "image/jpeg", 200) for i, data in enumerate(photos)]
    good += [Upload("good", name, data, ctype, 200) for name, (data, ctype) in good_corpus().items()]
    phone = [
        Upload(
            "phone", f"phone{w}x{h}", phone_photo((w, h), i, photos[i] if i < len(photos) else None), "image/jpeg", 200
        )
        for i, (w, h) in enumerate(PHONE_SIZES)
    ]
    bad = [Upload("bad", name, data, ctype, status) for name, (data, ctype, status) in bad_corpus(MAX_UPLOAD).items()]
    return {"good": good, "phone": phone, "bad": bad}


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no lscpu)"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = set(fields.get("Flags", "").split())
    simd = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{fields.get('Model name', '?').strip()} ({os.cpu_count()} CPUs; {', '.join(simd) or 'no avx2'})"


@dataclass
class Result:
    index: int
    kind: str
    status: int  # 0: no answer (connection error, timeout)
    expected: int
    seconds: float


async def soak(url: str, uploads: list[Upload], concurrency: int, on_result) -> None:
    queue: asyncio.Queue[tuple[int, Upload]] = asyncio.Queue()
    for item in enumerate(uploads):
        queue.put_nowait(item)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                index, upload = queue.get_nowait()
                started = time.perf_counter()
                try:
                    files = {"file": (f"{upload.name}.bin", upload.data, upload.content_type)}
                    status = (await client.post("/predict", files=files)).status_code
                except httpx.HTTPError:
                    status = 0
                on_result(Result(index, upload.kind, status, upload.expected, time.perf_counter() - started))

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--window", type=int, default=1_000, help="requests per reported window")
    parser.add_argument("--mix", default="good=0.7,phone=0.1,bad=0.2", help="share of each kind of upload")
    parser.add_argument("--model", default="models/stage-1.onnx", help="what the server serves (its default)")
    parser.add_argument("--photos", type=Path, default=REPO.parent / "shared" / "datasets" / "dandelion-grass")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    load_before = os.getloadavg()
    print(f"CPU: {cpu_model()}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in load_before)}")
    mix = build_mix(args.photos)
    shares = {kind: float(share) for kind, share in (part.split("=") for part in args.mix.split(","))}
    rng = random.Random(args.seed)
    kinds = rng.choices(list(shares), weights=list(shares.values()), k=args.requests)
    uploads = [rng.choice(mix[kind]) for kind in kinds]
    print(
        f"{args.requests} requests at concurrency {args.concurrency}: "
        + ", ".join(f"{kinds.count(k)} {k} (of {len(mix[k])} inputs)" for k in shares)
    )

    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    requested = (REPO / args.model).resolve()
    if requested.is_file():
        model = requested
    else:  # an untrained stand-in of the same format (same cost per request as a trained one)
        pth, onnx = ensure_models(tmp / "absent.pth", tmp / "absent.onnx", tmp)
        model = onnx if requested.suffix == ".onnx" else pth
    server = ServerProcess({"MODEL_PATH": str(model), "MODEL_PULL": "false"}, tmp / "server.log", cwd=REPO)
    log_path, url = server.log_path, server.url
    try:
        try:
            server.wait_ready(timeout=300)
        except RuntimeError as err:
            raise SystemExit(f"the server did not get ready ({err}); see {log_path}") from None
        print(f"server pid {server.proc.pid} ready, RSS {server.rss_bytes() / 2**20:.0f} MiB; log {log_path}")
        print(f"{'requests':>10} {'p50 ms':>8} {'p99 ms':>8} {'RSS MiB':>8}  non-2xx by status; unexpected")

        statuses: collections.Counter[int] = collections.Counter()
        unexpected: collections.Counter[str] = collections.Counter()
        window: list[Result] = []
        rss: list[float] = []

        def on_result(result: Result) -> None:
            statuses[result.status] += 1
            if result.status != result.expected:
                unexpected[f"{uploads[result.index].name}: {result.status} (expected {result.expected})"] += 1
            window.append(result)
            done = sum(statuses.values())
            if len(window) == args.window or done == args.requests:
                rss.append(server.rss_bytes() / 2**20)
                times = [r.seconds * 1000 for r in window]
                bad = collections.Counter(r.status for r in window if not 200 <= r.status < 300)
                wrong = sum(r.status != r.expected for r in window)
                print(
                    f"{done:>10} {pct(times, 0.5):>8.1f} {pct(times, 0.99):>8.1f} {rss[-1]:>8.0f}  "
                    f"{dict(sorted(bad.items())) or '-'}; {wrong}"
                )
                window.clear()

        started = time.perf_counter()
        asyncio.run(soak(url, uploads, args.concurrency, on_result))
        elapsed = time.perf_counter() - started
    finally:
        server.stop()
        if model.parent == tmp:  # the untrained stand-ins
            for stand_in in tmp.glob("stage-1.*"):
                stand_in.unlink()

    server_errors = sum(n for status, n in statuses.items() if status >= 500 or status == 0)
    growth = max(rss[1:], default=rss[0]) - rss[0] if rss else float("nan")
    print(f"\n{args.requests} requests in {elapsed:.0f} s ({args.requests / elapsed:.1f}/s)")
    print(f"answers by status: {dict(sorted(statuses.items()))}  (0 = no answer)")
    print(f"unexpected answers: {dict(unexpected) or 'none'}")
    print(f"5xx or no answer: {server_errors} (goal 0)")
    print(
        f"RSS after the first window {rss[0]:.0f} MiB, highest after it {rss[0] + growth:.0f} MiB: "
        f"growth {growth:.0f} MiB (goal < {RSS_GOAL_MIB})"
    )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if load_before[0] >= 1:
        print(f"note: started at load {load_before[0]:.1f}; quote figures only from runs started below 1")
    raise SystemExit(1 if server_errors or unexpected or growth >= RSS_GOAL_MIB else 0)


if __name__ == "__main__":
    main()
