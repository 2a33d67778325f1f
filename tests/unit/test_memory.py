"""monitor/common/memory.py: glibc's arenas bounded and free memory given back, with the reader threads."""

from __future__ import annotations

import ctypes
import os
import platform
import time

import pytest

from monitor.common import memory

GLIBC = platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="glibc's allocator only")
def test_trim_gives_freed_memory_back() -> None:
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    # 64 MB in blocks below the mmap threshold: freed, they stay in the heap until trimmed.
    blocks = [libc.malloc(64 * 1024) for _ in range(1024)]
    for b in blocks:
        ctypes.memset(b, 1, 64 * 1024)  # touched: resident
    for b in blocks[:-1]:  # the last one pins the heap's top: only a trim inside the heap gives pages back
        libc.free(b)
    before = _rss_kb()
    assert memory.trim()
    after = _rss_kb()
    libc.free(blocks[-1])
    assert before - after > 32 * 1024, (before, after)


@pytest.mark.skipif(not GLIBC, reason="glibc's allocator only")
def test_arenas_capped_once_unless_the_environment_says(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert memory.cap_arenas() is None  # the operator's setting wins
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    n = memory.cap_arenas()
    assert n == max(2, os.cpu_count() or 2)
    assert memory.cap_arenas() == n


@pytest.mark.skipif(not GLIBC, reason="glibc's allocator only")
def test_trimmer_runs_until_stopped() -> None:
    t = memory.Trimmer(interval_s=0.05)
    t.start()
    deadline = time.monotonic() + 5
    while t.trims < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    t.stop()
    assert t.trims >= 2
    done = t.trims
    time.sleep(0.2)
    assert t.trims == done  # stopped


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")
