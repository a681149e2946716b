"""Child processes the project starts (servers, dvc, the object store): a free loopback port,
and children that stop with the command that started them.

Every long-running child runs in its own process group. When the parent is asked to stop
(SIGTERM from a service manager or `kill PID`, SIGINT from Ctrl-C), the same signal goes to the
child's whole group, and whatever is left of the group after a grace period gets SIGKILL, so no
grandchild (uvicorn workers, a stage script under dvc, a job runner) outlives the command.
A signal sent to the parent's PID alone would otherwise leave them running, orphaned.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
# Long enough for servers to drain requests and for the object store to flush (about 4 s).
GRACE_S = 10.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_PROC = Path("/proc")
_running: set[subprocess.Popen] = set()
_running_lock = threading.Lock()


def free_ports(count: int = 1) -> list[int]:
    """Ports free on 127.0.0.1 right now (all held open together, so they are distinct)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    return free_ports(1)[0]


# ---------------------------------------------------------------------------- the parent's side


class Stopped(KeyboardInterrupt):
    """The command was asked to stop (SIGTERM, SIGINT, SIGHUP): unwind, stopping children on the way.

    A KeyboardInterrupt, so that everything that already cleans up after Ctrl-C does so for a
    service manager's SIGTERM too; `greenr` then exits with 128 + the signal number.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def raise_on_stop_signals() -> None:
    """In the main thread: turn SIGTERM, SIGINT and SIGHUP into `Stopped` (Python's default for
    SIGTERM is to die on the spot, skipping every `finally`)."""

    def handler(signum: int, frame: object) -> None:
        raise Stopped(signum)

    for signum in STOP_SIGNALS:
        signal.signal(signum, handler)


def stop_signal(exc: BaseException) -> int:
    """The signal to pass on to children while unwinding from `exc`."""
    if isinstance(exc, Stopped):
        return exc.signum
    return signal.SIGINT if isinstance(exc, KeyboardInterrupt) else signal.SIGTERM


# ---------------------------------------------------------------------------- process groups


def group_members(pgid: int) -> list[int]:
    """PIDs of the live (not zombie) processes in process group `pgid`."""
    if not _PROC.is_dir():  # not Linux: ask the kernel whether the group still exists
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    members = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def running(pid: int, name: str | None = None) -> bool:
    """Whether `pid` runs (a zombie does not; a child of this process that exited is reaped),
    and, given `name`, whether its command line mentions it (a PID file may outlive its process,
    and the PID be reused)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    folder = _PROC / str(pid)
    if not _PROC.is_dir():
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    try:
        stat = (folder / "stat").read_text()
        cmdline = (folder / "cmdline").read_bytes()
    except OSError:
        return False
    if stat[stat.rfind(")") + 2] == "Z":
        return False
    return name is None or name.encode() in cmdline


def _stop(pid: int, alive: Callable[[], bool], grace_s: float, sig: int) -> bool:
    """`sig` to the group `pid` leads (or to `pid` alone when it leads none), SIGKILL to what is
    alive after `grace_s`; True if anything was running."""
    if not alive():
        return False
    for signum, wait_s in ((sig, grace_s), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group_members(pid):
                os.killpg(pid, signum)
            else:
                os.kill(pid, signum)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not alive():
                return True
            time.sleep(0.05)
        log.warning("process (group) %d still running %.0f s after %s", pid, wait_s, signal.Signals(signum).name)
    return True


def stop(proc: subprocess.Popen, grace_s: float = GRACE_S, sig: int = signal.SIGTERM) -> None:
    """Stop a child and, if it leads a process group, everything in that group.

    Sends `sig` (servers drain their requests), then SIGKILL to whatever is still alive after
    `grace_s`, and reaps the child. Also cleans up a group whose leader has already exited.
    """
    _stop(proc.pid, lambda: proc.poll() is None or bool(group_members(proc.pid)), grace_s, sig)


def stop_pid(pid: int, grace_s: float = GRACE_S, sig: int = signal.SIGTERM) -> bool:
    """Stop a process known by its PID only (started by an earlier command), with its process
    group if it leads one; True if it was running."""

    return _stop(pid, lambda: running(pid) or bool(group_members(pid)), grace_s, sig)


@contextlib.contextmanager
def supervised(argv: Sequence[str], grace_s: float = GRACE_S, **popen: Any) -> Iterator[subprocess.Popen]:
    """Run `argv` in its own process group for the duration of the block.

    Leaving the block stops the whole group: on an exception (Ctrl-C, `Stopped`, a timeout)
    with the matching signal, else with SIGTERM if anything is left (daemons the child left
    behind). Children started from worker threads are stopped by `stop_all()`.

    stdin is /dev/null unless given: a child outside the terminal's foreground process group
    that read the terminal would be stopped (SIGTTIN) and hang.
    """
    popen.setdefault("stdin", subprocess.DEVNULL)
    proc = subprocess.Popen(argv, process_group=0, **popen)
    with _running_lock:
        _running.add(proc)
    try:
        yield proc
    except BaseException as exc:
        stop(proc, grace_s, stop_signal(exc))
        raise
    finally:
        stop(proc, grace_s)
        with _running_lock:
            _running.discard(proc)


def run(
    argv: Sequence[str],
    *,
    input: str | bytes | None = None,
    timeout: float | None = None,
    grace_s: float = GRACE_S,
    **popen: Any,
) -> subprocess.CompletedProcess:
    """Like `subprocess.run`, but the child runs in its own process group, which is stopped
    whole (not just the child) on Ctrl-C, SIGTERM to this process (see `Stopped`) or timeout."""
    if input is not None:
        popen["stdin"] = subprocess.PIPE
    with supervised(argv, grace_s, **popen) as proc:
        out, err = proc.communicate(input, timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def stop_all(grace_s: float = GRACE_S) -> None:
    """Stop every supervised child still running (e.g. a `dvc pull` in a server's worker thread
    when the server shuts down)."""
    with _running_lock:
        children = list(_running)
    for proc in children:
        stop(proc, grace_s)


class ServerProcess:
    """The model server (`python -m serve`, or `argv`) in a child process on 127.0.0.1:<free
    port>, its output in `log_path`, stopped by its PID: what the tests and benches start.

    The environment binds it to loopback; `env` adds to it (MODEL_PATH, BACKEND, ...). Nothing
    here imports the server: a bench starts servers built from other code the same way (an
    argument `{port}` in `argv` becomes the port, for servers that take it as a flag).
    """

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        argv: Sequence[str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        import sys

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = {
            **os.environ,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "GREENR_OFFLINE": "1",
            "LOG_LEVEL": "warning",
            **env,
        }
        self._log = open(log_path, "wb")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [str(self.port) if arg == "{port}" else arg for arg in argv or [sys.executable, "-m", "serve"]],
            cwd=cwd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def get(self, path: str, timeout: float = 10) -> tuple[int, Any]:
        """(status, parsed JSON body) of GET `path`; OSError while nothing listens."""
        import json
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as err:
            with err:
                return err.code, json.loads(err.read() or b"null")

    def wait_ready(self, timeout: float = 120) -> dict:
        """/ready's body once the model is loaded and the backend choice has settled (so that the
        backend does not change under a measurement); RuntimeError at once when the model fails to
        load or the process exits, and after `timeout` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                status, body = self.get("/ready")
            except OSError:  # not listening yet
                time.sleep(0.1)
                continue
            if status == 200 and self.get("/model")[1]["inference"]["settled"]:
                return self.get("/ready")[1]
            if status != 200 and body.get("error"):
                raise RuntimeError(f"model failed to load: {body['error']}\n{self.log_tail()}")
            time.sleep(0.05)
        raise RuntimeError(f"model not ready in {timeout:.0f} s\n{self.log_tail()}")

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (every thread)."""
        fields = (_PROC / str(self.proc.pid) / "stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_bytes(self) -> int:
        for line in (_PROC / str(self.proc.pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for pid {self.proc.pid}")

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        stop(self.proc)
        self._log.close()
