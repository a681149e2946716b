"""Choosing a backend for a model file: `BACKEND=auto` / `PRECISION=auto`, checked against the reference.

Every candidate (backend x precision) that can run the file is built and run on the probe batch
(greenr.backends.base.probe_batch). It must agree with the reference: all labels equal and the
logits within TOLERANCE. The reference is torch fp32: for an ONNX file, its logits stored at
export (so the check needs no torch), for a checkpoint, the torch backend run here. Among the
candidates that agree, `auto` picks the fastest on the probe batch (one image, then the batch).

bf16 is a candidate only where the CPU computes it natively (greenr.hardware.native_bf16); asked
for elsewhere, or disagreeing with the reference, it falls back to fp32 and says so in the log.
int8 runs the INT8 export beside the fp32 one (greenr.backends.quantize), on the backends that passed
the export stage's test-split check (its `quantization.backends`), and is checked on the probe batch
with its own bound (greenr.backends.base.TOLERANCE); asked for where none agrees, likewise fp32.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import statistics
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from greenr.backends.base import FLIP_MARGIN, PRECISIONS, TOLERANCE, Agreement, Backend, ModelFile, compare, probe_batch
from greenr.backends.model_file import load_model_file, read_int8_companion
from greenr.errors import GreenrError
from greenr.hardware import available_cpus, native_bf16, native_int8


@dataclass(frozen=True)
class BackendInfo:
    name: str
    library: str  # the Python module that must be importable
    formats: tuple[str, ...]  # model file formats it runs
    bf16: bool  # whether it has a bf16 mode


# Order = preference among equals (auto picks by measured speed).
BACKENDS: dict[str, BackendInfo] = {
    info.name: info
    for info in (
        BackendInfo("onnxruntime", "onnxruntime", ("onnx",), False),
        BackendInfo("openvino", "openvino", ("onnx",), True),
        BackendInfo("torch", "torch", ("torch",), True),
    )
}
BACKEND_CHOICES = ("auto", *BACKENDS)
PRECISION_CHOICES = ("auto", *PRECISIONS)
TIMING_REPEATS = 3

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackendCandidate:
    """What happened to one backend x precision at load time (shown at /model)."""

    backend: str
    precision: str
    # chosen | agrees | disagrees | failed | not installed | no native bf16 | runs as <precision> |
    # (int8) no INT8 export ... | not certified at export
    status: str
    agreement: dict[str, Any] | None = None
    ms_batch1: float | None = None
    ms_probe_batch: float | None = None
    detail: str | None = None


@dataclass(frozen=True)
class Selection:
    backend: Backend
    candidates: list[BackendCandidate]
    reference: str  # where the reference logits came from
    # Set while `backend` is the first candidate that agreed and the others are not timed yet:
    # `settle()` checks and times them all (the full choice), e.g. in the background.
    settle: Callable[[], Selection] | None = field(default=None, repr=False, compare=False)

    @property
    def settled(self) -> bool:
        return self.settle is None

    def describe(self) -> dict[str, Any]:
        return {
            **self.backend.describe(),
            "reference": self.reference,
            "settled": self.settled,
            "candidates": [asdict(c) for c in self.candidates],
        }


def installed(name: str) -> bool:
    """Whether the backend's library can be imported (a `sys.modules[lib] = None` block counts as absent)."""
    try:
        return importlib.util.find_spec(BACKENDS[name].library) is not None
    except (ImportError, ValueError):
        return False


def build(name: str, model: ModelFile, precision: str, threads: int) -> Backend:
    """One backend, imported only now: serving an ONNX model never imports torch."""
    cls: type[Backend]
    if name == "onnxruntime":
        from greenr.backends.onnxruntime_backend import OnnxRuntimeBackend as cls
    elif name == "openvino":
        from greenr.backends.openvino_backend import OpenVinoBackend as cls
    elif name == "torch":
        from greenr.backends.torch_backend import TorchBackend as cls
    else:
        raise GreenrError(f"unknown backend {name!r}", f"use one of: {', '.join(BACKENDS)}")
    return cls(model, precision, threads)


@dataclass(frozen=True)
class _Checked:
    agreement: Agreement
    precision: str  # what the library really computed in
    ms_probe_batch: float


def _check(backend: Backend, probe: np.ndarray, reference: np.ndarray) -> _Checked:
    """Agreement on the probe batch, and that pass's time (one sample of the speed score's batch half)."""
    backend.forward(probe[:1])  # warm-up: first calls allocate and tune
    start = time.perf_counter()
    logits = backend.forward(probe)
    elapsed = time.perf_counter() - start
    effective = backend.effective_precision()
    agreement = compare(logits, reference, TOLERANCE[effective], FLIP_MARGIN[effective])
    return _Checked(agreement, effective, elapsed * 1000)


def _median_ms(backend: Backend, images: np.ndarray, timed_ms: tuple[float, ...] = ()) -> float:
    """Median ms of TIMING_REPEATS forward passes over `images`, counting `timed_ms` (passes
    already timed) among them: one timing alone swings with the machine's load."""
    times = list(timed_ms)
    while len(times) < TIMING_REPEATS:
        start = time.perf_counter()
        backend.forward(images)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _try(
    name: str, precision: str, building: Future[Backend], probe: np.ndarray, reference: np.ndarray, timed: bool
) -> tuple[Backend | None, BackendCandidate, float]:
    """Check one candidate once built: (the backend if it agrees, what happened, its speed score in ms)."""
    try:
        built = building.result()
        checked = _check(built, probe, reference)
    except Exception as exc:
        log.warning("backend %s %s failed on the probe batch: %s: %s", name, precision, type(exc).__name__, exc)
        return None, BackendCandidate(name, precision, "failed", detail=f"{type(exc).__name__}: {exc}"), 0.0
    agreement = checked.agreement
    if checked.precision != precision:
        log.warning("%s ignored PRECISION=%s and computes in %s", name, precision, checked.precision)
        return None, BackendCandidate(name, precision, f"runs as {checked.precision}", agreement.to_dict()), 0.0
    if not agreement.ok:
        log.warning(
            "%s %s disagrees with the reference on the probe batch (max |logit diff| %.3g, labels %.0f%% the "
            "same): not used",
            name,
            precision,
            agreement.max_abs_diff,
            agreement.label_agreement * 100,
        )
        return None, BackendCandidate(name, precision, "disagrees", agreement.to_dict()), 0.0
    # The speed score: latency (one image) plus throughput (the probe batch), each a median.
    ms1 = _median_ms(built, probe[:1]) if timed else None
    ms_batch = _median_ms(built, probe, (checked.ms_probe_batch,)) if timed else checked.ms_probe_batch
    candidate = BackendCandidate(name, precision, "agrees", agreement.to_dict(), ms1, ms_batch)
    return built, candidate, (ms1 or 0.0) + ms_batch


def _plan(names: list[str], precision: str, bf16_ok: bool, int8_names: list[str]) -> list[tuple[str, str]]:
    """(backend, precision) pairs to try, bf16 first where it may serve, int8 where it is certified."""
    plan = []
    for name in names:
        if precision in ("auto", "bf16") and bf16_ok and BACKENDS[name].bf16:
            plan.append((name, "bf16"))
        if precision in ("auto", "int8") and name in int8_names:
            plan.append((name, "int8"))
        plan.append((name, "fp32"))
    return plan


def _int8_offer(
    usable: list[str], precision: str, int8: ModelFile | None, int8_note: str
) -> tuple[list[str], list[BackendCandidate]]:
    """The backends that may run the INT8 export, and a candidate saying why for each that may not."""
    if precision not in ("auto", "int8"):
        return [], []
    onnx_backends = [n for n in usable if "onnx" in BACKENDS[n].formats]
    if int8 is None or int8.spec.quantization is None:
        if precision == "int8":
            log.warning("PRECISION=int8, but %s: using fp32", int8_note)
        return [], [BackendCandidate(n, "int8", int8_note) for n in onnx_backends]
    certified = set(int8.spec.quantization.get("backends") or [])
    names = [n for n in onnx_backends if n in certified]
    refused = [BackendCandidate(n, "int8", "not certified at export") for n in onnx_backends if n not in certified]
    if precision == "int8" and not names:
        log.warning("PRECISION=int8, but no installed backend passed the export's INT8 check: using fp32")
    return names, refused


def _first_order(item: tuple[str, str], asked: str, int8_fast: bool) -> int:
    """Which candidate a cold start tries first: the precision asked for, else native bf16 (several
    times faster), then int8 where the CPU has int8 dot products, then fp32 (BACKENDS order within each)."""
    precision = item[1]
    if precision == asked:
        return -1
    if precision == "bf16":
        return 0
    if precision == "int8":
        return 1 if int8_fast else 3
    return 2


def load_backend(
    model: ModelFile,
    backend: str = "auto",
    precision: str = "auto",
    threads: int = 0,
    cpu_flags: frozenset[str] | set[str] | None = None,
    first_agreeing: bool = False,
    int8: ModelFile | None = None,
    int8_note: str = "no INT8 export",
) -> Selection:
    """Build the backend that serves `model`; GreenrError (with a fix) if none can.

    `backend`/`precision` as the BACKEND/PRECISION settings; `threads` 0 = every core available;
    `cpu_flags` overrides /proc/cpuinfo (tests); `int8`: the INT8 export that goes with `model`
    (greenr.backends.model_file.int8_companion), or None and `int8_note` saying why there is none.
    `first_agreeing`: where several candidates could serve, return the first that agrees (in
    `_first_order`) without building or timing the rest, as an unsettled Selection whose
    `settle()` makes the full choice; a server answers sooner that way (cold start) and swaps to
    the fastest once it is known.
    """
    if backend not in BACKEND_CHOICES:
        raise GreenrError(f"unknown backend {backend!r}", f"use one of: {', '.join(BACKEND_CHOICES)}")
    if precision not in PRECISION_CHOICES:
        raise GreenrError(f"unknown precision {precision!r}", f"use one of: {', '.join(PRECISION_CHOICES)}")
    threads = threads or available_cpus()
    names = [n for n in (BACKENDS if backend == "auto" else [backend]) if model.format in BACKENDS[n].formats]
    if not names:
        raise GreenrError(
            f"BACKEND={backend} cannot run {model.name} (a {model.format} model file)",
            "the torch backend runs the checkpoint (models/stage-1.pth), onnxruntime and openvino its ONNX "
            "export (models/stage-1.onnx); use BACKEND=auto",
        )
    candidates: list[BackendCandidate] = []
    usable = []
    for name in names:
        if installed(name):
            usable.append(name)
        else:
            candidates.append(BackendCandidate(name, "-", "not installed"))
    if not usable:
        raise GreenrError(
            f"no backend that runs {model.name} is installed ({', '.join(names)})",
            "install the project's dependencies (`make setup`), or the serving image's (onnxruntime)",
        )
    bf16_ok = native_bf16(cpu_flags)
    if precision == "bf16" and not bf16_ok:
        log.warning("PRECISION=bf16, but this CPU has no native bf16 (amx_bf16/avx512_bf16): using fp32")
    if not bf16_ok and precision != "fp32":
        candidates += [BackendCandidate(n, "bf16", "no native bf16") for n in usable if BACKENDS[n].bf16]
    int8_names, refused = _int8_offer(usable, precision, int8, int8_note)
    candidates += refused
    plan = _plan(usable, precision, bf16_ok, int8_names)
    files = {"int8": int8} if int8 is not None else {}

    probe = probe_batch(model.spec.image_size)
    reference = model.spec.reference_logits
    source = "torch fp32 logits stored at export"
    if reference is None and model.format == "torch" and installed("torch"):
        source = "torch fp32 (this checkpoint, run here)"
        # Only the reference itself is asked for: nothing to compare, nothing to time.
        if plan == [("torch", "fp32")]:
            chosen = build("torch", model, "fp32", threads)
            chosen.forward(probe[:1])  # warm-up: the first call allocates
            return Selection(chosen, [*candidates, BackendCandidate("torch", "fp32", "chosen")], source)
        reference = build("torch", model, "fp32", threads).forward(probe)
    elif reference is None:
        first = next(name for name, prec in plan if prec == "fp32")
        source = f"{first} fp32 (no reference logits stored in {model.name})"
        log.warning("%s carries no reference logits: backends are compared with %s fp32", model.name, first)
        reference = build(first, model, "fp32", threads).forward(probe)

    if first_agreeing and len(plan) > 1:
        full_choice = functools.partial(
            load_backend, model, backend, precision, threads, cpu_flags, int8=int8, int8_note=int8_note
        )
        int8_fast = native_int8(cpu_flags)
        for name, prec in sorted(plan, key=lambda item: _first_order(item, precision, int8_fast)):
            runs = files.get(prec, model)
            built, candidate, _ = _try(name, prec, _build_now(name, runs, prec, threads), probe, reference, False)
            if built is not None:
                log.info("backend %s %s serves %s while the others are timed", name, prec, model.name)
                return Selection(built, [*candidates, _chosen(candidate)], source, settle=full_choice)
        # None agrees: the full choice below says why, candidate by candidate.

    agreeing: list[tuple[float, Backend, BackendCandidate]] = []
    # Built side by side (loading and compiling a graph is mostly single-threaded), then checked
    # and timed one after the other, so that the timings do not disturb each other.
    with ThreadPoolExecutor(len(plan), thread_name_prefix="backend-build") as pool:
        building = {
            (name, prec): pool.submit(build, name, files.get(prec, model), prec, threads) for name, prec in plan
        }
        for name, prec in plan:
            if precision in ("bf16", "int8") and prec == "fp32" and any(b.name == name for _, b, _ in agreeing):
                continue  # bf16/int8 asked for and it agrees: fp32 is only its fallback
            built, candidate, score = _try(name, prec, building[name, prec], probe, reference, len(plan) > 1)
            if built is None:
                candidates.append(candidate)
            else:
                agreeing.append((score, built, candidate))
    if not agreeing:
        raise GreenrError(
            f"no backend agrees with the reference on {model.name}: {candidates}",
            "export the model again (`dvc repro export`), or choose BACKEND=torch with the checkpoint",
        )
    if precision in ("bf16", "int8") and any(b.precision == precision for _, b, _ in agreeing):
        agreeing = [a for a in agreeing if a[1].precision == precision]
    best = min(agreeing, key=lambda item: item[0])
    for _, built, candidate in agreeing:
        candidates.append(candidate if built is not best[1] else _chosen(candidate))
    chosen = best[1]
    log.info(
        "backend %s %s (%d threads) serves %s; reference: %s",
        chosen.name,
        chosen.precision,
        threads,
        model.name,
        source,
    )
    return Selection(chosen, candidates, source)


def _build_now(name: str, model: ModelFile, precision: str, threads: int) -> Future[Backend]:
    """`build` in this thread, as the finished Future that `_try` reads."""
    done: Future[Backend] = Future()
    try:
        done.set_result(build(name, model, precision, threads))
    except Exception as exc:
        done.set_exception(exc)
    return done


def _chosen(candidate: BackendCandidate) -> BackendCandidate:
    return BackendCandidate(**{**asdict(candidate), "status": "chosen"})


def open_backend(
    path: str | Path, backend: str = "auto", precision: str = "auto", threads: int = 0
) -> tuple[ModelFile, Selection]:
    """Read a model file (and the INT8 export beside an ONNX one) and choose its backend (evaluate,
    `greenr predict`, benchmarks)."""
    model = load_model_file(path)
    int8, note = read_int8_companion(model, Path(path), str(path))
    return model, load_backend(model, backend, precision, threads, int8=int8, int8_note=note)
