"""One error type for expected failures: it says what failed and how to fix it."""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., object])


class GreenrError(Exception):
    """An expected failure (bad input, missing data, unreachable store...).

    The CLI prints it without a traceback and exits with status 2.
    """

    def __init__(self, what: str, fix: str | None = None) -> None:
        self.what = what
        self.fix = fix
        super().__init__(f"{what}\n  fix: {fix}" if fix else what)


def exits_cleanly(func: F) -> F:
    """Turn a GreenrError raised by an entry point into a one-paragraph message and exit 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except GreenrError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt as stop:
            # Ctrl-C, or greenr.processes.Stopped (SIGTERM, SIGHUP): the usual 128 + signal number.
            signum = getattr(stop, "signum", signal.SIGINT)
            print(
                "interrupted" if signum == signal.SIGINT else f"stopped ({signal.Signals(signum).name})",
                file=sys.stderr,
            )
            sys.exit(128 + signum)
        except BrokenPipeError:
            # The reader went away (`greenr metrics | head`): stop quietly, as cat and grep do.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush cannot fail again
            sys.exit(141)

    return wrapper  # type: ignore[return-value]


def setup_logging(level: int = logging.INFO) -> None:
    """One line per event, on stderr."""
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", stream=sys.stderr
    )
