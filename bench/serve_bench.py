"""This server vs the original api.py approach: same weights, same machine, one run.

Starts both on 127.0.0.1 (free ports), measures cold start to the first answered prediction,
then throughput and p50/p99 latency at concurrency 1 and 16 with `hey` (a Go load generator,
so the client costs little CPU), alternating the servers round by round so that background
load hits both alike. Prints both side by side and the ratios.

    .venv/bin/python bench/serve_bench.py [--model models/stage-1.pth] [--rounds 2]
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from greenr.processes import free_port, stop

BOUNDARY = "greenr-bench"


def multipart(data: bytes) -> bytes:
    return (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


class Proc:
    def __init__(self, name: str, cmd: list[str], env: dict[str, str], port: int, log: Path) -> None:
        self.name, self.port, self.url = name, port, f"http://127.0.0.1:{port}"
        self.log = open(log, "wb")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env={**os.environ, **env}, stdout=self.log, stderr=subprocess.STDOUT
        )

    def cold_start(self, body: bytes, timeout: float = 300) -> float:
        """Seconds from process start to the first successful POST /predict."""
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=30) as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise SystemExit(f"{self.name} exited early; see its log")
                try:
                    response = http.post(
                        f"{self.url}/predict",
                        content=body,
                        headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"},
                    )
                    if response.status_code == 200:
                        return time.perf_counter() - self.started
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        raise SystemExit(f"{self.name} did not answer in {timeout}s")

    def stop(self) -> None:
        stop(self.proc)
        self.log.close()


def hey_run(hey: str, url: str, body_file: Path, n: int, c: int) -> tuple[float, list[float], dict]:
    """(seconds from the first request to the last answer, per-request latencies in s, status counts)."""
    done = subprocess.run(
        [
            hey,
            "-n",
            str(n),
            "-c",
            str(c),
            "-m",
            "POST",
            "-t",
            "60",
            "-o",
            "csv",
            "-T",
            f"multipart/form-data; boundary={BOUNDARY}",
            "-D",
            str(body_file),
            f"{url}/predict",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    statuses: dict[str, int] = {}
    for row in rows:
        statuses[row["status-code"]] = statuses.get(row["status-code"], 0) + 1
    # hey's csv has no run total, so throughput uses the span of the requests it timed.
    span = max(float(r["offset"]) + float(r["response-time"]) for r in rows)
    return span, [float(r["response-time"]) for r in rows], statuses


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def find_image(root: Path) -> bytes:
    for folder in (root / "data", Path("/work/main/data")):
        found = sorted(folder.glob("*/*.jpg")) if folder.is_dir() else []
        if found:
            return found[0].read_bytes()
    from PIL import Image

    buffer = io.BytesIO()
    Image.effect_mandelbrot((500, 375), (-2, -1.2, 1, 1.2), 100).convert("RGB").save(buffer, "JPEG")
    return buffer.getvalue()


def ensure_model(path: Path, tmp: Path) -> Path:
    if path.is_file():
        return path
    from greenr.model import checkpoint
    from greenr.model.architectures import build_model, get_arch

    fallback = tmp / "stage-1.pth"
    checkpoint.save(
        fallback,
        build_model("resnet18", 2),
        "resnet18",
        ["dandelion", "grass"],
        get_arch("resnet18").preprocessing(128),
    )
    print(f"{path} missing: using an untrained ResNet18 at 128 px ({fallback})")
    return fallback


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/stage-1.pth")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--n1", type=int, default=60, help="requests per round at concurrency 1")
    parser.add_argument("--n16", type=int, default=320, help="requests per round at concurrency 16")
    parser.add_argument(
        "--omp-threads",
        type=int,
        default=0,
        help="set OMP_NUM_THREADS (and THREADS) for both servers; 0 = their defaults",
    )
    args = parser.parse_args()
    hey = shutil.which("hey")
    if hey is None:
        raise SystemExit("`hey` is not installed: run `apt-get install -y hey`")
    tmp = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    model = ensure_model((REPO / args.model).resolve(), tmp)
    image = find_image(REPO)
    body = multipart(image)
    body_file = tmp / "body.bin"
    body_file.write_bytes(body)
    py = sys.executable
    env = {"MODEL_PATH": str(model), "GREENR_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    if args.omp_threads:
        env |= {"OMP_NUM_THREADS": str(args.omp_threads), "THREADS": str(args.omp_threads)}
    specs = {
        "original": (
            [py, "-m", "uvicorn", "bench.original_api:app", "--host", "127.0.0.1", "--log-level", "warning", "--port"],
            {},
        ),
        "greenr": ([py, "-m", "serve"], {"MODEL_PULL": "false", "LOG_LEVEL": "warning"}),
    }
    print(
        f"image {len(image)} bytes, model {model}, cores {len(os.sched_getaffinity(0))}, "
        f"load average {os.getloadavg()[0]:.1f}, OMP_NUM_THREADS {args.omp_threads or 'default'}"
    )
    servers: dict[str, Proc] = {}
    cold: dict[str, float] = {}
    try:
        for name, (cmd, extra) in specs.items():  # one at a time, so starts do not compete
            port = free_port()
            full = cmd + [str(port)] if name == "original" else cmd
            servers[name] = Proc(name, full, {**env, **extra, "PORT": str(port)}, port, tmp / f"{name}.log")
            cold[name] = servers[name].cold_start(body)
            hey_run(hey, servers[name].url, body_file, 32, 16)  # warm-up
        results: dict[tuple[str, int], dict] = {}
        for c, n in ((1, args.n1), (16, args.n16)):
            for _ in range(args.rounds):
                for name, server in servers.items():
                    span, lat, statuses = hey_run(hey, server.url, body_file, n, c)
                    acc = results.setdefault((name, c), {"span": 0.0, "lat": [], "statuses": {}})
                    acc["span"] += span
                    acc["lat"] += lat
                    for k, v in statuses.items():
                        acc["statuses"][k] = acc["statuses"].get(k, 0) + v
    finally:
        for server in servers.values():
            server.stop()

    print(f"\n{'':24}{'original':>12}{'greenr':>12}{'ratio':>10}")
    print(
        f"{'cold start to 1st pred':24}{cold['original']:>11.2f}s{cold['greenr']:>11.2f}s"
        f"{cold['original'] / cold['greenr']:>9.2f}x"
    )
    for c in (1, 16):
        o, g = results[("original", c)], results[("greenr", c)]
        tput_o, tput_g = len(o["lat"]) / o["span"], len(g["lat"]) / g["span"]
        print(f"{f'c={c} throughput req/s':24}{tput_o:>12.1f}{tput_g:>12.1f}{tput_g / tput_o:>9.2f}x")
        for q, label in ((0.5, "p50"), (0.99, "p99")):
            lo, lg = pct(o["lat"], q) * 1000, pct(g["lat"], q) * 1000
            print(f"{f'c={c} {label} ms':24}{lo:>12.1f}{lg:>12.1f}{lo / lg:>9.2f}x")
        print(f"{f'c={c} statuses':24}{o['statuses']!s:>12}{g['statuses']!s:>12}")
    print("ratio: throughput greenr/original; latency and cold start original/greenr (>1 = greenr better)")
    print(
        f"mean latency c=16: original {statistics.mean(results[('original', 16)]['lat']) * 1000:.1f} ms, "
        f"greenr {statistics.mean(results[('greenr', 16)]['lat']) * 1000:.1f} ms; "
        f"load average now {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
