"""Where torch runs: the device, and how many CPU threads it may use."""

from __future__ import annotations

import os

import torch

from greenr.errors import GreenrError


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
    count = num_threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(count)
    return count
