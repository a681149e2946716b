"""Choosing a backend for a model file: `BACKEND=auto` / `PRECISION=auto`, checked against the reference.

Every candidate (backend x precision) that can run the file is built and run on the probe batch
(greenr.backends.base.probe_batch). It must agree with the reference: all labels equal and the
logits within TOLERANCE. The reference is torch fp32: for an ONNX file, its logits stored at
export (so the check needs no torch), for a checkpoint, the torch backend run here. Among the
candidates that agree, `auto` picks the fastest on the probe batch (one image, then the batch).

bf16 is a candidate only where the CPU computes it natively (greenr.hardware.native_bf16); asked
for elsewhere, or disagreeing with the reference, it falls back to fp32 and says so in the log.
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

from greenr.backends.base import PRECISIONS, TOLERANCE, Agreement, Backend, compare, probe_batch
from greenr.backends.model_file import ModelFile, load_model_file
from greenr.errors import GreenrError
from greenr.hardware import available_cpus, native_bf16


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
class Candidate:
    """What happened to one backend x precision at load time (shown at /model)."""

    backend: str
    precision: str
    status: str  # chosen | agrees | disagrees | failed | not installed | no native bf16
    agreement: dict[str, Any] | None = None
    ms_batch1: float | None = None
    ms_probe_batch: float | None = None
    detail: str | None = None


@dataclass(frozen=True)
class Selection:
    backend: Backend
    candidates: list[Candidate]
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
    return _Checked(compare(logits, reference, TOLERANCE[effective]), effective, elapsed * 1000)


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
) -> tuple[Backend | None, Candidate, float]:
    """Check one candidate once built: (the backend if it agrees, what happened, its speed score in ms)."""
    try:
        built = building.result()
        checked = _check(built, probe, reference)
    except Exception as exc:
        log.warning("backend %s %s failed on the probe batch: %s: %s", name, precision, type(exc).__name__, exc)
        return None, Candidate(name, precision, "failed", detail=f"{type(exc).__name__}: {exc}"), 0.0
    agreement = checked.agreement
    if checked.precision != precision:
        log.warning("%s ignored PRECISION=%s and computes in %s", name, precision, checked.precision)
        return None, Candidate(name, precision, f"runs as {checked.precision}", agreement.to_dict()), 0.0
    if not agreement.ok:
        log.warning(
            "%s %s disagrees with the reference on the probe batch (max |logit diff| %.3g, labels %.0f%% the "
            "same): not used",
            name,
            precision,
            agreement.max_abs_diff,
            agreement.label_agreement * 100,
        )
        return None, Candidate(name, precision, "disagrees", agreement.to_dict()), 0.0
    # The speed score: latency (one image) plus throughput (the probe batch), each a median.
    ms1 = _median_ms(built, probe[:1]) if timed else None
    ms_batch = _median_ms(built, probe, (checked.ms_probe_batch,)) if timed else checked.ms_probe_batch
    candidate = Candidate(name, precision, "agrees", agreement.to_dict(), ms1, ms_batch)
    return built, candidate, (ms1 or 0.0) + ms_batch


def _plan(names: list[str], precision: str, bf16_ok: bool) -> list[tuple[str, str]]:
    """(backend, precision) pairs to try, bf16 first where it may serve."""
    plan = []
    for name in names:
        if precision in ("auto", "bf16") and bf16_ok and BACKENDS[name].bf16:
            plan.append((name, "bf16"))
        plan.append((name, "fp32"))
    return plan


def load_backend(
    model: ModelFile,
    backend: str = "auto",
    precision: str = "auto",
    threads: int = 0,
    cpu_flags: frozenset[str] | set[str] | None = None,
    first_agreeing: bool = False,
) -> Selection:
    """Build the backend that serves `model`; GreenrError (with a fix) if none can.

    `backend`/`precision` as the BACKEND/PRECISION settings; `threads` 0 = every core available;
    `cpu_flags` overrides /proc/cpuinfo (tests). `first_agreeing`: where several candidates
    could serve, return the first that agrees (bf16 first, then BACKENDS order) without building
    or timing the rest, as an unsettled Selection whose `settle()` makes the full choice; a server
    answers sooner that way (cold start) and swaps to the fastest once it is known.
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
    candidates: list[Candidate] = []
    usable = []
    for name in names:
        if installed(name):
            usable.append(name)
        else:
            candidates.append(Candidate(name, "-", "not installed"))
    if not usable:
        raise GreenrError(
            f"no backend that runs {model.name} is installed ({', '.join(names)})",
            "install the project's dependencies (`make setup`), or the serving image's (onnxruntime)",
        )
    bf16_ok = native_bf16(cpu_flags)
    if precision == "bf16" and not bf16_ok:
        log.warning("PRECISION=bf16, but this CPU has no native bf16 (amx_bf16/avx512_bf16): using fp32")
    if not bf16_ok and precision != "fp32":
        candidates += [Candidate(n, "bf16", "no native bf16") for n in usable if BACKENDS[n].bf16]
    plan = _plan(usable, precision, bf16_ok)

    probe = probe_batch(model.spec.image_size)
    reference = model.spec.reference_logits
    source = "torch fp32 logits stored at export"
    if reference is None and model.format == "torch" and installed("torch"):
        source = "torch fp32 (this checkpoint, run here)"
        # Only the reference itself is asked for: nothing to compare, nothing to time.
        if plan == [("torch", "fp32")]:
            chosen = build("torch", model, "fp32", threads)
            chosen.forward(probe[:1])  # warm-up: the first call allocates
            return Selection(chosen, [*candidates, Candidate("torch", "fp32", "chosen")], source)
        reference = build("torch", model, "fp32", threads).forward(probe)
    elif reference is None:
        first = next(name for name, prec in plan if prec == "fp32")
        source = f"{first} fp32 (no reference logits stored in {model.name})"
        log.warning("%s carries no reference logits: backends are compared with %s fp32", model.name, first)
        reference = build(first, model, "fp32", threads).forward(probe)

    if first_agreeing and len(plan) > 1:
        full_choice = functools.partial(load_backend, model, backend, precision, threads, cpu_flags)
        for name, prec in sorted(plan, key=lambda item: item[1] != "bf16"):  # native bf16: several times faster
            built, candidate, _ = _try(name, prec, _build_now(name, model, prec, threads), probe, reference, False)
            if built is not None:
                log.info("backend %s %s serves %s while the others are timed", name, prec, model.name)
                return Selection(built, [*candidates, _chosen(candidate)], source, settle=full_choice)
        # None agrees: the full choice below says why, candidate by candidate.

    agreeing: list[tuple[float, Backend, Candidate]] = []
    # Built side by side (loading and compiling a graph is mostly single-threaded), then checked
    # and timed one after the other, so that the timings do not disturb each other.
    with ThreadPoolExecutor(len(plan), thread_name_prefix="backend-build") as pool:
        building = {(name, prec): pool.submit(build, name, model, prec, threads) for name, prec in plan}
        for name, prec in plan:
            if precision == "bf16" and prec == "fp32" and any(b.name == name for _, b, _ in agreeing):
                continue  # bf16 asked for and it agrees: fp32 is only its fallback
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
    if precision == "bf16" and any(b.precision == "bf16" for _, b, _ in agreeing):
        agreeing = [a for a in agreeing if a[1].precision == "bf16"]
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


def _chosen(candidate: Candidate) -> Candidate:
    return Candidate(**{**asdict(candidate), "status": "chosen"})


def open_backend(
    path: str | Path, backend: str = "auto", precision: str = "auto", threads: int = 0
) -> tuple[ModelFile, Selection]:
    """Read a model file and choose its backend (evaluate, `greenr predict`, benchmarks)."""
    model = load_model_file(path)
    return model, load_backend(model, backend, precision, threads)
