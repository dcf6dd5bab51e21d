"""runtime/memory.py: malloc's free pages go back to the system between the engine's phases."""

import sys

import pytest

from ppo_core.runtime.memory import _malloc_trim, release_freed_memory


def resident_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2 ** 20


@pytest.mark.skipif(not sys.platform.startswith("linux") or _malloc_trim() is None, reason="glibc only")
def test_freed_heap_memory_leaves_the_resident_set():
    blocks = [bytearray(64 * 1024) for _ in range(1024)]  # 64 MiB in blocks below glibc's mmap threshold
    kept = blocks.pop()  # a live block above the freed ones: free() alone cannot shrink the heap past it
    del blocks
    before = resident_mib()
    assert release_freed_memory()
    assert resident_mib() < before - 32
    del kept
