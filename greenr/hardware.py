"""What the machine offers: the cores this process may use, whether the CPU computes bf16 natively,
and handing freed memory back to it.

Torch-free: the server, the batch scorer and the training stages all size their thread pools
from `available_cpus()`, and the inference backends use bf16 only where `native_bf16()` says so.
"""

from __future__ import annotations

import ctypes
import math
import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

# Flags /proc/cpuinfo shows for CPUs with bf16 arithmetic in hardware (Intel AMX, AVX512-BF16
# on Intel and AMD Zen 4+). Without them bf16 is emulated: slower than fp32, never worth it.
BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
# int8 dot products in hardware (VNNI, AMX): there INT8 convolutions run several times faster than
# fp32; without them (AVX2 alone) an int8 kernel is about as fast as fp32.
INT8_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def available_cpus() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup CPU quota (a
    Kubernetes `limits.cpu`, `docker run --cpus`), which the affinity does not show."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The feature flags of the first CPU in /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def native_bf16(flags: frozenset[str] | set[str] | None = None) -> bool:
    """True when the CPU has bf16 arithmetic in hardware (`flags` default: this machine's)."""
    return bool(BF16_FLAGS & (cpu_flags() if flags is None else flags))


def native_int8(flags: frozenset[str] | set[str] | None = None) -> bool:
    """True when the CPU has int8 dot products in hardware (`flags` default: this machine's)."""
    return bool(INT8_FLAGS & (cpu_flags() if flags is None else flags))


def cpu_model() -> str:
    """The CPU's model name, for benchmark reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


@lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, from the C library this process already has loaded (None elsewhere)."""
    try:
        return getattr(ctypes.CDLL(None), "malloc_trim", None)
    except OSError:
        return None


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the OS. glibc keeps what a large computation freed (an
    ONNX export, a runtime's buffers: 0.2-0.3 GB) for its next allocations, so the process's RSS
    stays at its high-water mark, and a forked worker's copy of those pages is kept alive while
    they are rewritten. A millisecond or less; a no-op where the C library is not glibc."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
