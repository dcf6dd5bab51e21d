"""With PPO_CORE_MALLOC=release ppo-core fixes glibc's mmap threshold so freed tensors leave the RSS
(ppo_core/runtime/malloc.py); without it, or beside the user's own malloc settings, glibc is left alone."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# after a 4 MiB block is freed, glibc's own (dynamic) threshold serves a 1 MiB block from the heap; a fixed 128 KiB
# threshold maps it on its own (mallinfo2's hblks counts the mapped blocks)
IS_MAPPED = """
import ctypes, {first}
libc = ctypes.CDLL("libc.so.6")
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.free(libc.malloc(4 << 20))
before = libc.mallinfo2().hblks
block = libc.malloc(1 << 20)
print(libc.mallinfo2().hblks > before)
libc.free(block)
"""
MALLOC_VARIABLES = ("PPO_CORE_MALLOC", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def glibc_with_mallinfo2() -> bool:
    import ctypes

    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION")) and hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except (ValueError, OSError, AttributeError):
        return False


@pytest.mark.skipif(not glibc_with_mallinfo2(), reason="glibc's malloc (2.33+) only")
@pytest.mark.parametrize("first, preset, mapped", [
    ("ppo_core", {}, "False"),  # glibc's own behaviour: the default
    ("ppo_core", {"PPO_CORE_MALLOC": "release"}, "True"),
    ("ppo_core", {"PPO_CORE_MALLOC": "release", "MALLOC_MMAP_THRESHOLD_": "33554432"}, "False"),  # the user's own
])
def test_freed_blocks_are_returned_when_asked_and_the_user_set_no_threshold(first, preset, mapped):
    env = {key: value for key, value in os.environ.items() if key not in MALLOC_VARIABLES}
    done = subprocess.run([sys.executable, "-c", IS_MAPPED.format(first=first)], env={**env, **preset},
                          capture_output=True, text=True, check=True, timeout=120)
    assert done.stdout.strip() == mapped
