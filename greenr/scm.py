"""Every call to git and to the DVC CLI goes through here.

DVC is always the one installed beside the running Python (the project's venv), with this
venv's bin first on PATH, because DVC stages call `python` and queued experiments start
`dvc exp queue-worker` through PATH. Failures become GreenrErrors that say what to do.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from greenr import processes
from greenr.errors import GreenrError
from greenr.paths import repo_root

log = logging.getLogger(__name__)


def tool_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for child processes: this venv's tools first on PATH, no telemetry."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    return env | (extra or {})


def dvc_executable() -> str:
    """The dvc of this environment (next to the running Python), else the one on PATH."""
    beside = Path(sys.executable).parent / "dvc"
    return str(beside) if beside.is_file() else "dvc"


def dvc(
    *args: str,
    cwd: Path | None = None,
    capture: bool = False,
    check: bool = True,
    timeout: float | None = None,
    fix: str = "see DVC's message above",
) -> subprocess.CompletedProcess[str]:
    """Run the real dvc CLI in the project (streaming its output unless `capture`).

    With `check`, a non-zero exit is a GreenrError carrying the end of DVC's message.
    """
    argv = [dvc_executable(), *args]
    log.info("$ dvc %s", shlex.join(args))
    pipe = subprocess.PIPE if capture else None
    try:
        # Its own process group, stopped whole on Ctrl-C/SIGTERM: the stage script it runs too.
        done = processes.run(
            argv, cwd=cwd or repo_root(), env=tool_env(), text=True, stdout=pipe, stderr=pipe, timeout=timeout
        )
    except FileNotFoundError:
        raise GreenrError("the dvc command was not found", "run `make setup` (it installs dvc into .venv)") from None
    except subprocess.TimeoutExpired:
        raise GreenrError(f"`dvc {shlex.join(args)}` did not finish in {timeout:.0f} s", fix) from None
    if check and done.returncode != 0:
        detail = f": {(done.stderr or done.stdout or '').strip()[-800:]}" if capture else ""
        raise GreenrError(f"`dvc {shlex.join(args)}` failed (exit {done.returncode}){detail}", fix)
    return done


def dvc_json(*args: str, cwd: Path | None = None, fix: str = "see DVC's message above") -> Any:
    """`dvc ... --json`, parsed."""
    return json.loads(dvc(*args, "--json", cwd=cwd, capture=True, fix=fix).stdout or "null")


def remote_has_more(target: str, cwd: Path | None = None) -> bool:
    """Whether the DVC remote holds outputs of `target` (a .dvc file, or dvc.yaml for every stage)
    that the cache lacks, i.e. whether a pull would fetch anything. A new, empty remote holds none:
    pulling then only prints DVC's warnings about missing files. True when the status cannot be
    read, so that the pull runs and says what is wrong."""
    done = dvc("status", "--cloud", "--json", target, cwd=cwd, capture=True, check=False)
    try:
        status = json.loads(done.stdout or "null") if done.returncode == 0 else None
    except ValueError:
        status = None
    return not isinstance(status, dict) or "deleted" in status.values()


def git(*args: str, cwd: Path | None = None) -> str | None:
    """git's stdout (stripped); None when git fails or is not installed."""
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd or repo_root(), capture_output=True, text=True, check=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def head(cwd: Path | None = None) -> tuple[str, bool]:
    """(HEAD commit or 'unknown', whether tracked files have uncommitted changes)."""
    commit = git("rev-parse", "HEAD", cwd=cwd)
    if commit is None:
        return "unknown", False
    return commit, bool(git("status", "--porcelain", "--untracked-files=no", cwd=cwd))


def resolve(rev: str, cwd: Path | None = None) -> str | None:
    """The commit a revision (branch, tag, sha, experiment ref) names; None if it names none."""
    return git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", cwd=cwd)


def show(rev: str, path: str, cwd: Path | None = None) -> str | None:
    """A file as committed at `rev`; None when that revision has no such file.

    A revision that does not exist is a GreenrError (it is a typo, not a missing file).
    """
    try:
        done = subprocess.run(
            ["git", "show", f"{rev}:{path}"], cwd=cwd or repo_root(), capture_output=True, text=True, check=False
        )
    except OSError as exc:
        raise GreenrError(f"could not run git: {exc}", "install git") from None
    if done.returncode == 0:
        return done.stdout
    if "exists on disk, but not in" in done.stderr or "does not exist in" in done.stderr:
        return None
    raise GreenrError(
        f"git show {rev}:{path} failed: {done.stderr.strip()}",
        "pass an existing revision (e.g. main or origin/main; in CI fetch it first: `git fetch origin main`)",
    )
