"""Whether this process may reach the internet: `GREENR_OFFLINE` set means never even try."""

from __future__ import annotations

import os


def offline() -> bool:
    """True when downloads must not even be tried (CI, tests, air-gapped machines)."""
    return os.environ.get("GREENR_OFFLINE", "").lower() in {"1", "true", "yes"}
