"""scripts/setup.sh picks the interpreter: PYTHON, else the venv's, else the newest supported one that
runs; it notices a changed interpreter and says what to do when none is found. Checked with
`--dry-run` (no uv, no venv written) and stand-in interpreters on a PATH of their own."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers.project import REPO

SETUP = REPO / "scripts" / "setup.sh"


def fake_python(path: Path, version: str | None) -> Path:
    """An executable that answers setup.sh's probe like Python `version`; None: refuses like a pyenv shim."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if version is None:
        body = f'echo "pyenv: {path.name}: command not found" >&2\nexit 127\n'
    else:
        body = f'echo "{version} $0"\n'
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


@pytest.fixture
def machine(tmp_path: Path):
    """A PATH with only the given Pythons (the real ones in /usr/bin are shadowed by refusing stand-ins)."""
    bin_dir = tmp_path / "bin"
    for name in ("python3.13", "python3.12", "python3.11", "python3", "python"):
        fake_python(bin_dir / name, None)

    def setup(*args: str, pythons: dict[str, str] | None = None, **env: str) -> subprocess.CompletedProcess[str]:
        for name, version in (pythons or {}).items():
            fake_python(bin_dir / name, version)
        full_env = {
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "HOME": str(tmp_path),
            "UV_PYTHON_DOWNLOADS": "never",
            "UV_PROJECT_ENVIRONMENT": str(tmp_path / "venv"),
            **env,
        }
        return subprocess.run(
            ["bash", str(SETUP), "--dry-run", *args], env=full_env, capture_output=True, text=True, timeout=60
        )

    setup.bin = bin_dir  # type: ignore[attr-defined]
    setup.venv = tmp_path / "venv"  # type: ignore[attr-defined]
    return setup


def write_stamp(venv: Path, version: str, exe: Path) -> None:
    """A venv as setup.sh leaves it: a runnable bin/python and the stamp of what it was built from."""
    fake_python(venv / "bin" / "python", version)
    digest = {name: hashlib.sha256((REPO / name).read_bytes()).hexdigest() for name in ("uv.lock", "pyproject.toml")}
    (venv / ".greenr-setup").write_text(
        f"python {version} {exe}\nuv.lock {digest['uv.lock']}\npyproject.toml {digest['pyproject.toml']}\n"
        "bytecode compiled\n"
    )


def test_newest_supported_python_that_runs_wins(machine):
    # python3.13 is a shim that refuses (installed in pyenv, not selected): skipped, not fatal.
    done = machine(pythons={"python3.12": "3.12.4", "python3.11": "3.11.9"})
    assert done.returncode == 0, done.stderr
    assert f"would sync {machine.venv} from uv.lock with Python 3.12.4 ({machine.bin}/python3.12)" in done.stdout


def test_python3_counts_when_it_is_supported(machine):
    done = machine(pythons={"python3": "3.13.1"})
    assert done.returncode == 0, done.stderr
    assert "with Python 3.13.1" in done.stdout


def test_explicit_python_wins_over_newer_ones(machine):
    done = machine(pythons={"python3.13": "3.13.1", "python3.11": "3.11.9"}, PYTHON="python3.11")
    assert done.returncode == 0, done.stderr
    assert "with Python 3.11.9" in done.stdout


def test_explicit_name_finds_pyenvs_unselected_version(machine, tmp_path):
    root = tmp_path / "pyenv"
    fake_python(root / "versions" / "3.12.1" / "bin" / "python3.12", "3.12.1")
    fake_python(root / "versions" / "3.12.10" / "bin" / "python3.12", "3.12.10")
    (machine.bin / "pyenv").write_text(f'#!/bin/sh\n[ "$1" = root ] && echo {root}\n')
    (machine.bin / "pyenv").chmod(0o755)
    done = machine(PYTHON="python3.12")
    assert done.returncode == 0, done.stderr
    assert f"with Python 3.12.10 ({root}/versions/3.12.10/bin/python3.12)" in done.stdout


def test_no_supported_python_offline_says_which_versions_and_how(machine):
    done = machine(pythons={"python3": "3.10.13"})
    assert done.returncode == 1
    assert "no supported Python on PATH (tried python3.13, python3.12, python3.11, python3)" in done.stderr
    assert "greenr needs Python 3.11, 3.12 or 3.13" in done.stderr
    assert "PYTHON=/path/to/python3.11 make run" in done.stderr
    assert "uv python install 3.13" in done.stderr


def test_too_old_python_is_refused(machine, tmp_path):
    old = fake_python(tmp_path / "old" / "python", "3.10.13")
    done = machine(PYTHON=str(old))
    assert done.returncode == 1
    assert f"{old} is Python 3.10.13; greenr needs 3.11 or newer" in done.stderr


def test_python_that_does_not_run_is_named(machine):
    done = machine(PYTHON="/nowhere/python3.12")
    assert done.returncode == 1
    assert "PYTHON=/nowhere/python3.12 does not run" in done.stderr


def test_newer_than_checked_warns_and_goes_on(machine, tmp_path):
    new = fake_python(tmp_path / "new" / "python3.14", "3.14.0")
    done = machine(PYTHON=str(new))
    assert done.returncode == 0, done.stderr
    assert "warning: Python 3.14.0 is newer than CI checks" in done.stderr
    assert "with Python 3.14.0" in done.stdout


def test_stamp_keeps_the_venvs_interpreter_until_it_changes(machine):
    exe = fake_python(machine.bin / "python3.11", "3.11.9")
    write_stamp(machine.venv, "3.11.9", exe)
    # A newer Python on PATH does not rebuild a working venv...
    done = machine(pythons={"python3.13": "3.13.1"})
    assert done.returncode == 0, done.stderr
    assert f"environment is up to date ({machine.venv}, Python 3.11.9)" in done.stdout
    # ...asking for another one does...
    done = machine(PYTHON="python3.13")
    assert "would sync" in done.stdout and "Python 3.13.1" in done.stdout
    # ...and so does the venv's interpreter being upgraded in place.
    fake_python(exe, "3.11.10")
    done = machine()
    assert "would sync" in done.stdout and "Python 3.13.1" in done.stdout


def test_stamp_notices_a_changed_lock(machine, tmp_path):
    exe = fake_python(machine.bin / "python3.12", "3.12.4")
    write_stamp(machine.venv, "3.12.4", exe)
    stamp = machine.venv / ".greenr-setup"
    stamp.write_text(stamp.read_text().replace("uv.lock ", "uv.lock 0"))
    done = machine()
    assert f"would sync {machine.venv} from uv.lock with Python 3.12.4" in done.stdout


def test_a_venv_whose_python_no_longer_runs_is_rebuilt(machine):
    exe = fake_python(machine.bin / "python3.12", "3.12.4")
    write_stamp(machine.venv, "3.12.4", exe)
    os.remove(machine.venv / "bin" / "python")
    done = machine()
    assert "would sync" in done.stdout
