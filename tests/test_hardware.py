"""greenr.hardware: handing freed C-heap memory back to the OS."""

from __future__ import annotations

import ctypes
import ctypes.util

import psutil
import pytest

from greenr.hardware import release_free_memory

LIBC = ctypes.util.find_library("c")


@pytest.mark.skipif(LIBC is None or not hasattr(ctypes.CDLL(LIBC), "malloc_trim"), reason="needs glibc")
def test_release_free_memory_returns_freed_heap_pages() -> None:
    libc = ctypes.CDLL(LIBC)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size, count = 4096, 50_000  # 200 MB in blocks below glibc's mmap threshold: heap pages
    blocks = [libc.malloc(size) for _ in range(count)]
    for block in blocks:
        ctypes.memset(block, 1, size)
    sentinel = libc.malloc(size)  # above them, so freeing them leaves a hole glibc keeps, not a shrinkable top
    for block in blocks:
        libc.free(block)
    held = psutil.Process().memory_info().rss
    release_free_memory()
    released = held - psutil.Process().memory_info().rss
    libc.free(sentinel)
    assert released > 150 * 2**20, f"RSS fell by {released / 2**20:.0f} MiB"
