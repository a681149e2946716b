"""The server on each inference backend vs the original api.py approach: same weights, one interleaved run.

Servers (each a process on 127.0.0.1, a free port):
  original          bench/original_api.py: torch, transforms per request, the model run in the
                    async handler (blocking the event loop), batch 1; the checkpoint
  torch             `python -m serve`, BACKEND=torch, the checkpoint
  onnxruntime       `python -m serve`, BACKEND=onnxruntime PRECISION=fp32, the ONNX export
  openvino-fp32     `python -m serve`, BACKEND=openvino PRECISION=fp32
  openvino-bf16     `python -m serve`, BACKEND=openvino PRECISION=bf16 (only where the CPU has bf16)
  default           `python -m serve` as shipped: the ONNX export, BACKEND=auto PRECISION=auto

  openvino-int8     `python -m serve`, BACKEND=openvino PRECISION=int8 (only with an INT8 export
                    certified for OpenVINO beside the export)

Each server is started alone and timed from process start to its first answered POST /predict
(cold start). Then `hey` (a Go load generator: little client CPU) sends, round after round and
server after server (so background load hits all alike), a small training photo (multipart, and
as the raw body with `Content-Type: image/jpeg` to our servers) and a phone-size photo (4032x3024
JPEG, the training photo upscaled) at concurrency 1 and 16. In each round, while the servers
idle, the model alone runs in this process on each backend and precision our servers settled on (its
threads, batch 16 of the decoded small photo): each server's c=16 throughput is printed as a share
of it. Prints throughput, p50, p99, CPU time per request, non-200 answers, cold start and RSS per
server, the done-when targets for `default` against `original`, the CPU (model, SIMD flags) and
the load average before and after: quote only runs that started below load 1.

    .venv/bin/python bench/serve_bench.py [--rounds 3] [--servers original,default,...]
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.photos import training_photos, upscaled
from greenr.hardware import BF16_FLAGS, INT8_FLAGS, available_cpus, cpu_flags, cpu_model, native_bf16
from greenr.processes import ServerProcess

BOUNDARY = "greenr-bench"
CONCURRENCY = (1, 16)
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
MODEL_BATCH = 16


def multipart(data: bytes) -> bytes:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    )
    return head.encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


@dataclass
class Result:
    span: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    cpu_s: float = 0.0  # CPU time the server process spent (all its threads)

    def add(self, span: float, latencies: list[float], statuses: dict[str, int], cpu_s: float) -> None:
        self.span += span
        self.cpu_s += cpu_s
        self.latencies += latencies
        for code, count in statuses.items():
            self.statuses[code] = self.statuses.get(code, 0) + count

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.span if self.span else 0.0

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000 if ordered else float("nan")

    @property
    def cpu_ms_per_request(self) -> float:
        """Less sensitive to other processes than latency: what one request costs the server's CPU."""
        return self.cpu_s / len(self.latencies) * 1000 if self.latencies else float("nan")

    @property
    def non_200(self) -> int:
        return sum(count for code, count in self.statuses.items() if code != "200")


class Server(ServerProcess):
    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        super().__init__(env, log, [*cmd, *(["--port", "{port}"] if name == "original" else [])], cwd=REPO)

    def cold_start(self, body: bytes, timeout: float = 300) -> float:
        """Seconds from process start to the first answered POST /predict."""
        deadline = time.monotonic() + timeout
        headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
        with httpx.Client(timeout=30) as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise SystemExit(f"{self.name} exited at start; see {self.log_path}")
                try:
                    if http.post(f"{self.url}/predict", content=body, headers=headers).status_code == 200:
                        return time.perf_counter() - self.started
                except httpx.TransportError:
                    pass
                time.sleep(0.02)
        raise SystemExit(f"{self.name} did not answer in {timeout}s; see {self.log_path}")

    def backend(self, timeout: float = 120) -> str:
        """The backend and precision serving once the choice has settled (serve first, time later)."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                info = self.get("/model")[1]
                if info["inference"]["settled"]:
                    return f"{info['backend']} {info['precision']}"
                time.sleep(0.2)
            raise SystemExit(f"{self.name}: the backend choice did not settle in {timeout}s")
        except (OSError, KeyError, ValueError, TypeError):
            return "torch fp32 (its own code)"

    def rss_mib(self) -> float:
        try:
            return self.rss_bytes() / 2**20
        except (OSError, RuntimeError):
            return float("nan")


def hey(
    binary: str, url: str, body: Path, n: int, c: int, content_type: str = MULTIPART
) -> tuple[float, list[float], dict[str, int]]:
    """(seconds from the first request to the last answer, latencies in s, status counts)."""
    done = subprocess.run(
        [binary, "-n", str(n), "-c", str(c), "-m", "POST", "-t", "120", "-o", "csv"]
        + ["-T", content_type, "-D", str(body), f"{url}/predict"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    statuses: dict[str, int] = {}
    for row in rows:
        statuses[row["status-code"]] = statuses.get(row["status-code"], 0) + 1
    statuses["failed"] = n - len(rows)  # timeouts and connection errors leave no row
    # hey's CSV has no run total: throughput uses the span of the requests it timed.
    span = max((float(r["offset"]) + float(r["response-time"]) for r in rows), default=0.0)
    return span, [float(r["response-time"]) for r in rows], {k: v for k, v in statuses.items() if v}


def server_specs(pth: Path, onnx: Path) -> dict[str, tuple[list[str], dict[str, str]]]:
    py = sys.executable
    ours = [py, "-m", "serve"]
    common = {"MODEL_PULL": "false"}
    specs = {
        "original": (
            [py, "-m", "uvicorn", "bench.original_api:app", "--host", "127.0.0.1", "--log-level", "warning"],
            {"MODEL_PATH": str(pth)},
        ),
        "torch": (ours, {**common, "MODEL_PATH": str(pth), "BACKEND": "torch", "PRECISION": "fp32"}),
        "onnxruntime": (ours, {**common, "MODEL_PATH": str(onnx), "BACKEND": "onnxruntime", "PRECISION": "fp32"}),
        "openvino-fp32": (ours, {**common, "MODEL_PATH": str(onnx), "BACKEND": "openvino", "PRECISION": "fp32"}),
        "openvino-bf16": (ours, {**common, "MODEL_PATH": str(onnx), "BACKEND": "openvino", "PRECISION": "bf16"}),
        "default": (ours, {**common, "MODEL_PATH": str(onnx)}),
    }
    if not native_bf16():
        del specs["openvino-bf16"]
    if _int8_backends(onnx) and "openvino" in _int8_backends(onnx):
        specs["openvino-int8"] = (
            ours,
            {**common, "MODEL_PATH": str(onnx), "BACKEND": "openvino", "PRECISION": "int8"},
        )
    return specs


def _int8_backends(onnx: Path) -> list[str]:
    """The backends the INT8 export beside `onnx` is certified for ([] without one)."""
    from greenr.backends.model_file import load_model_file, read_int8_companion

    int8, _ = read_int8_companion(load_model_file(onnx), onnx, str(onnx))
    return list((int8.spec.quantization or {}).get("backends") or []) if int8 else []


class ModelAlone:
    """The model without the server: the backend and precision a server serves, in this process,
    on MODEL_BATCH copies of the decoded photo (the server's batcher caps batches at 16 too)."""

    def __init__(self, onnx: Path, backend_precision: str, photo: bytes) -> None:
        import numpy as np

        from greenr.backends.loading import open_backend
        from greenr.data.images import load_model_input

        backend, precision = backend_precision.split()
        _, selection = open_backend(onnx, backend, precision)
        self.backend = selection.backend
        self.label = (
            f"{self.backend.name} {self.backend.precision}, batch {MODEL_BATCH}, {self.backend.threads} threads"
        )
        image = load_model_input(photo, self.backend.spec.preprocessing)
        self.batch = np.ascontiguousarray(np.repeat(image[None], MODEL_BATCH, axis=0))
        self.seconds = 0.0
        self.images = 0
        self.backend.predict_proba(self.batch, MODEL_BATCH)  # warm-up

    def measure(self, passes: int = 10) -> None:
        start = time.perf_counter()
        for _ in range(passes):
            self.backend.predict_proba(self.batch, MODEL_BATCH)
        self.seconds += time.perf_counter() - start
        self.images += passes * MODEL_BATCH

    @property
    def throughput(self) -> float:
        return self.images / self.seconds if self.seconds else float("nan")


def ensure_models(pth: Path, onnx: Path, tmp: Path) -> tuple[Path, Path]:
    """The pipeline's checkpoint and export; an untrained ResNet18 at 128 px (and its export) if absent."""
    if pth.is_file() and onnx.is_file():
        return pth, onnx
    from greenr.backends.export import export_onnx
    from greenr.model import checkpoint
    from greenr.model.architectures import build_model, get_arch
    from greenr.model.spec import ModelSpec

    pth, onnx = tmp / "stage-1.pth", tmp / "stage-1.onnx"
    spec = ModelSpec("resnet18", ["dandelion", "grass"], get_arch("resnet18").preprocessing(128))
    checkpoint.save(pth, build_model("resnet18", 2), spec)
    onnx.write_bytes(export_onnx(checkpoint.load(pth)))
    print(f"no pipeline model: using an untrained ResNet18 at 128 px ({pth}, {onnx})")
    return pth, onnx


def lscpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return cpu_model()


def targets(results: dict, cold: dict[str, float], images: list[str]) -> list[tuple[str, bool, str]]:
    """The issue's done-when checks for `default` against `original`."""
    small, phone = images
    o16, d16 = results[("original", small, 16)], results[("default", small, 16)]
    o1, d1 = results[("original", small, 1)], results[("default", small, 1)]
    op1, dp1 = results[("original", phone, 1)], results[("default", phone, 1)]
    ours_non_200 = sum(r.non_200 for (name, _, _), r in results.items() if name != "original")
    return [
        (
            "c16 throughput >= 6x original",
            d16.throughput >= 6 * o16.throughput,
            f"{d16.throughput / o16.throughput:.2f}x",
        ),
        (
            "c16 p99 <= original / 2",
            d16.pct(0.99) <= o16.pct(0.99) / 2,
            f"{d16.pct(0.99):.0f} vs {o16.pct(0.99):.0f} ms",
        ),
        ("c1 p50 < original", d1.pct(0.5) < o1.pct(0.5), f"{d1.pct(0.5):.1f} vs {o1.pct(0.5):.1f} ms"),
        (
            "phone c1 p50 <= original / 4",
            dp1.pct(0.5) <= op1.pct(0.5) / 4,
            f"{dp1.pct(0.5):.0f} vs {op1.pct(0.5):.0f} ms",
        ),
        ("cold start <= 2 s", cold["default"] <= 2.0, f"{cold['default']:.2f} s"),
        ("0 non-200 (our servers)", ours_non_200 == 0, str(ours_non_200)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/stage-1.pth", help="the checkpoint (original and torch rows)")
    parser.add_argument("--onnx", default="models/stage-1.onnx", help="its export (the other rows)")
    parser.add_argument("--servers", default="", help="comma-separated subset of the rows (default: all)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n1", type=int, default=100, help="small photo: requests per round at concurrency 1")
    parser.add_argument("--n16", type=int, default=480, help="small photo: requests per round at concurrency 16")
    parser.add_argument("--phone-n1", type=int, default=30, help="phone photo: requests per round at c=1")
    parser.add_argument("--phone-n16", type=int, default=96, help="phone photo: requests per round at c=16")
    args = parser.parse_args()
    binary = shutil.which("hey")
    if binary is None:
        raise SystemExit("`hey` is not installed: `apt-get install -y hey`")
    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    pth, onnx = ensure_models((REPO / args.model).resolve(), (REPO / args.onnx).resolve(), tmp)
    specs = server_specs(pth, onnx)
    if args.servers:
        specs = {name: specs[name] for name in args.servers.split(",")}
    photo = training_photos()[0]
    raw = {f"small {photo.name}": photo.read_bytes(), "phone 4032x3024": upscaled(photo)}
    images = list(raw)
    bodies = {}
    for name, data in raw.items():
        bodies[name] = tmp / f"{name.split()[0]}.body"
        bodies[name].write_bytes(multipart(data))
    raw_small = f"small {photo.name}, raw body"
    bodies[raw_small] = tmp / "small.jpg"
    bodies[raw_small].write_bytes(raw[images[0]])
    flags = sorted(cpu_flags() & (BF16_FLAGS | INT8_FLAGS | {"avx2", "avx512f"})) or ["none"]
    print(f"CPU {lscpu_model()}, {available_cpus()} cores available, flags: {', '.join(flags)}")
    print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")
    print(f"bodies: {', '.join(f'{k} {len(v) / 1e3:.0f} kB' for k, v in raw.items())}; model {pth.name}/{onnx.name}")

    servers: dict[str, Server] = {}
    cold: dict[str, float] = {}
    backends: dict[str, str] = {}
    results: dict[tuple[str, str, int], Result] = {}
    try:
        for name, (cmd, env) in specs.items():  # one at a time, so cold starts do not compete
            servers[name] = Server(name, cmd, env, tmp / f"{name}.log")
            cold[name] = servers[name].cold_start(bodies[images[0]].read_bytes())
            backends[name] = servers[name].backend()
            hey(binary, servers[name].url, bodies[images[0]], 32, 16)  # warm-up
        # The model alone for every backend and precision one of our servers settled on.
        alone = {
            chosen: ModelAlone(onnx, chosen, raw[images[0]])
            for name, chosen in backends.items()
            if name not in ("original", "torch")
        }
        sizes = {
            images[0]: (args.n1, args.n16),
            raw_small: (args.n1, args.n16),
            images[1]: (args.phone_n1, args.phone_n16),
        }
        for _ in range(args.rounds):
            for model in alone.values():
                model.measure()
            for image in (images[0], raw_small, images[1]):
                kind = "image/jpeg" if image == raw_small else MULTIPART
                for c, n in zip(CONCURRENCY, sizes[image]):
                    for name, server in servers.items():
                        if name == "original" and image == raw_small:
                            continue  # it takes multipart only
                        before = server.cpu_seconds()
                        span, latencies, statuses = hey(binary, server.url, bodies[image], n, c, kind)
                        cpu = server.cpu_seconds() - before
                        results.setdefault((name, image, c), Result()).add(span, latencies, statuses, cpu)
        rss = {name: server.rss_mib() for name, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()
    load_after = os.getloadavg()

    print(f"\n{'server':15}{'backend':22}{'cold start':>11}{'RSS MiB':>9}")
    for name in servers:
        print(f"{name:15}{backends[name]:22}{cold[name]:>10.2f}s{rss[name]:>9.0f}")
    for image in (images[0], raw_small, images[1]):
        for c in CONCURRENCY:
            print(
                f"\n{image}, concurrency {c}:  {'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'CPU ms/req':>11}{'non-200':>9}"
            )
            for name in servers:
                if (name, image, c) not in results:
                    continue
                r = results[(name, image, c)]
                print(
                    f"  {name:30}{r.throughput:>8.1f}{r.pct(0.5):>9.1f}{r.pct(0.99):>9.1f}"
                    f"{r.cpu_ms_per_request:>11.1f}{r.non_200:>9}"
                )
    for chosen, model in alone.items():
        print(f"\nthe model alone ({model.label}): {model.throughput:.1f} images/s")
        for name in (n for n, b in backends.items() if b == chosen):
            for image in (images[0], raw_small):
                served = results[(name, image, 16)].throughput
                print(f"  {name} at c=16, {image}: {served:.1f} req/s = {served / model.throughput:.2f} of it")
    if {"original", "default"} <= set(servers):
        print("\ndone-when targets, `default` against `original`:")
        for label, ok, value in targets(results, cold, images):
            print(f"  [{'pass' if ok else 'FAIL'}] {label:34} {value}")
    print(f"\nload average before: {load_before[0]:.2f}, after: {load_after[0]:.2f}", end="")
    print("  (a run that started above 1 is not quotable)" if load_before[0] >= 1 else "")


if __name__ == "__main__":
    main()
