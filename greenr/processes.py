"""Child processes the project starts (servers in tests, benchmarks and commands): a free
loopback port, and a clean stop by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess


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


def stop(proc: subprocess.Popen, grace_s: float = 20) -> None:
    """SIGTERM (servers drain their requests), then SIGKILL if it does not exit in `grace_s`."""
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
