"""A full disk during the model write: a clear error, and the previous checkpoint left intact.

The disk is a real 64 MiB tmpfs (room for one ResNet18 checkpoint of about 45 MB, not two) where
this machine lets the tests mount one; elsewhere every write through greenr.atomic raises ENOSPC
once the same 64 MiB are used, which is what the kernel's write() would do.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from greenr.errors import GreenrError
from greenr.model import checkpoint
from tests.helpers.serving import write_checkpoint

ROOM = 64 * 2**20


class _FillingFile:
    """A file object whose writes fail with ENOSPC once the folder holds `ROOM` bytes."""

    def __init__(self, handle: Any, folder: Path) -> None:
        self._handle, self._folder = handle, folder

    def write(self, data: bytes) -> int:
        used = sum(p.stat().st_size for p in self._folder.iterdir() if p.is_file())
        if used + len(data) > ROOM:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._handle.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)

    def __enter__(self) -> _FillingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()


@pytest.fixture
def small_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    folder = tmp_path / "models"
    folder.mkdir()
    mount = shutil.which("mount")
    mounted = bool(mount) and (
        subprocess.run(
            [mount, "-t", "tmpfs", "-o", f"size={ROOM},mode=0755", "tmpfs", str(folder)], capture_output=True
        ).returncode
        == 0
    )
    if not mounted:
        real_fdopen = os.fdopen

        def fdopen(fd: int, *args: Any, **kwargs: Any) -> Any:
            handle = real_fdopen(fd, *args, **kwargs)
            return _FillingFile(handle, folder) if _opened_in(fd, folder) else handle

        monkeypatch.setattr(os, "fdopen", fdopen)
    print(f"disk: {'a real 64 MiB tmpfs' if mounted else 'ENOSPC injected into writes (no tmpfs mount here)'}")
    try:
        yield folder
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=True)


def _opened_in(fd: int, folder: Path) -> bool:
    return Path(os.readlink(f"/proc/self/fd/{fd}")).parent == folder


def test_model_write_on_a_full_disk_keeps_the_previous_checkpoint(small_disk: Path) -> None:
    path = small_disk / "stage-1.pth"
    first = write_checkpoint(path, seed=0)  # the same call the train stage makes (checkpoint.save)
    before = path.read_bytes()
    assert hashlib.sha256(before).hexdigest() == first

    with pytest.raises(GreenrError, match="no space left") as failure:
        write_checkpoint(path, seed=1)
    assert "is as it was before this write" in str(failure.value)
    assert "free disk space" in (failure.value.fix or "")

    assert path.read_bytes() == before
    assert checkpoint.load(path).sha256 == first
    assert sorted(p.name for p in small_disk.iterdir()) == ["stage-1.pth"], "a partial temporary file was left"
