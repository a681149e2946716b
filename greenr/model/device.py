"""Where torch runs: the device, and how many CPU threads it may use."""

from __future__ import annotations

import logging

import torch

from greenr.errors import GreenrError
from greenr.hardware import available_cpus, native_bf16

log = logging.getLogger(__name__)


def resolve_device(choice: str) -> torch.device:
    """`auto` picks cuda > mps > cpu; a forced device that is absent is an error."""
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available(),
        "cpu": True,
    }
    if choice == "auto":
        return torch.device(next(name for name in ("cuda", "mps", "cpu") if available[name]))
    if not available[choice]:
        raise GreenrError(
            f"train.device is {choice!r} but no {choice} device is available", "set train.device: auto (or cpu)"
        )
    return torch.device(choice)


def configure_threads(num_threads: int) -> int:
    """Use every core this process may run on unless told otherwise; return the count."""
    count = num_threads or available_cpus()
    torch.set_num_threads(count)
    return count


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether to run in bf16 autocast: `auto` means where the hardware computes bf16 natively
    (a CUDA GPU that supports it, a CPU with AMX or AVX512-BF16); fp32 everywhere else."""
    if precision == "fp32":
        return False
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported()
    elif device.type == "cpu":
        native = native_bf16()
    else:
        native = False
    if precision == "bf16" and not native:
        log.warning("train.precision is bf16 but %s has no native bf16: it is emulated (slower than fp32)", device)
        return device.type in ("cpu", "cuda")
    return native
