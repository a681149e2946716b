"""Where a prediction request's time goes: each step of the request path, then the whole request.

1. In one thread, the median time of every step the server runs for one upload: decoding at full
   scale (what the server did before) and at reduced scale (what it does now), the drift features,
   the forward pass of the backend BACKEND=auto picks, probabilities and the JSON answer.
2. The standard-library profiler (cProfile) over the same steps, top functions by cumulative time.
3. A real server (`python -m serve`, uvicorn) on 127.0.0.1: requests one at a time, multipart and
   as the raw body (`Content-Type: image/jpeg`), so the difference between each p50 and the sum
   of the steps is what HTTP, multipart parsing, thread hops and batching cost per request.

    .venv/bin/python bench/serve_profile.py [--model models/stage-1.onnx] [--requests 40]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.photos import training_photos, upscaled
from greenr.backends.base import probabilities
from greenr.backends.loading import open_backend
from greenr.data.images import decode_image, prepare, to_uint8_array
from greenr.hardware import available_cpus, cpu_model
from greenr.ops.drift import image_features
from greenr.processes import ServerProcess


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def steps(data: bytes, backend, repeat: int) -> dict[str, float]:
    spec = backend.spec.preprocessing
    model_input = prepare(data, spec)
    batch = model_input.array[None]
    logits = backend.forward(batch)

    def answer() -> str:
        probs = probabilities(logits, backend.spec.temperature)[0].tolist()
        best = max(range(len(probs)), key=probs.__getitem__)
        classes = backend.spec.classes
        return json.dumps({"prediction": classes[best], "probabilities": dict(zip(classes, probs))})

    return {
        "decode + resize, full scale": median_ms(lambda: to_uint8_array(decode_image(data), spec), repeat),
        "decode + resize, reduced scale (now)": median_ms(lambda: prepare(data, spec), repeat),
        "drift features (after the response)": median_ms(
            lambda: image_features(model_input.array, size=model_input.original_size), repeat
        ),
        f"forward, batch 1 ({backend.name} {backend.precision})": median_ms(lambda: backend.forward(batch), repeat),
        "probabilities + JSON": median_ms(answer, repeat),
    }


def profile(data: bytes, backend, repeat: int) -> str:
    spec = backend.spec.preprocessing
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(repeat):
        model_input = prepare(data, spec)
        image_features(model_input.array, size=model_input.original_size)
        json.dumps(backend.predict_proba(model_input.array[None])[0].tolist())
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(14)
    return "\n".join(line for line in out.getvalue().splitlines() if line.strip())[-2600:]


def served(model: str, bodies: dict[str, bytes], requests: int) -> dict[tuple[str, str], float]:
    """p50 of sequential POST /predict against a real server, per body and encoding."""
    with tempfile.TemporaryDirectory() as folder:
        server = ServerProcess({"MODEL_PATH": model, "MODEL_PULL": "false"}, Path(folder) / "server.log", cwd=REPO)
        try:
            # Settled: the backends are timed in the background after the first one serves.
            server.wait_ready(timeout=300)
            with httpx.Client(base_url=server.url, timeout=60) as http:
                result = {}
                for name, body in bodies.items():
                    for how, kwargs in (
                        ("multipart", {"files": {"file": ("a.jpg", body, "image/jpeg")}}),
                        ("raw body", {"content": body, "headers": {"content-type": "image/jpeg"}}),
                    ):
                        times = []
                        for i in range(requests + 3):
                            start = time.perf_counter()
                            response = http.post("/predict", **kwargs)
                            if i >= 3:  # the first requests warm up
                                times.append(time.perf_counter() - start)
                            assert response.status_code == 200, response.text
                        result[(name, how)] = statistics.median(times) * 1000
                return result
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/stage-1.onnx")
    parser.add_argument("--requests", type=int, default=40, help="repetitions per step and requests per photo")
    parser.add_argument("--no-server", action="store_true", help="skip part 3")
    args = parser.parse_args()
    model = str((REPO / args.model).resolve())
    load = os.getloadavg()[0]
    print(f"{cpu_model()}, {available_cpus()} cores available, load average {load:.1f} at start")
    _, selection = open_backend(model)
    backend = selection.backend
    photo = training_photos()[0]
    bodies = {f"training photo {photo.name}": photo.read_bytes(), "phone-size photo 4032x3024": upscaled(photo)}
    per_step = {}
    for name, body in bodies.items():
        print(f"\n== {name} ({len(body) / 1e3:.0f} kB): median ms per step, one thread")
        per_step[name] = steps(body, backend, args.requests)
        for step, ms in per_step[name].items():
            print(f"  {step:44} {ms:8.2f}")
    print(f"\n== cProfile of {args.requests} requests' steps (phone-size photo)")
    print(profile(bodies["phone-size photo 4032x3024"], backend, args.requests))
    if not args.no_server:
        print("\n== real server, one request at a time: p50 vs the steps on the hot path")
        for (name, how), p50 in served(model, bodies, args.requests).items():
            hot = sum(ms for step, ms in per_step[name].items() if "full scale" not in step and "drift" not in step)
            print(f"  {name:32} {how:9} p50 {p50:7.2f} ms = steps {hot:6.2f} + HTTP/parsing/threads {p50 - hot:6.2f}")
    print(f"\nload average {load:.1f} before, {os.getloadavg()[0]:.1f} after")


if __name__ == "__main__":
    main()
