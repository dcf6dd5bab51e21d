"""Handing memory that torch has freed back to the operating system (glibc's ``malloc_trim``).

On Linux torch's CPU tensors come from glibc's malloc. Once a large block has been freed, glibc raises its
threshold for mapping blocks on their own (up to 32 MiB), so the activations, KV caches and gradients of the next
step come from its heaps, and what they free stays in the process: the peak resident set then holds the freed
memory of earlier phases besides the live tensors of the current one (README, "Memory"). ``malloc_trim(0)``
returns every whole free page of every heap; a page that is used again later is faulted back in. The engine calls
it between phases (after the rollout, after the epochs), where a few milliseconds are nothing beside the phase.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Callable, Optional


@functools.cache
def _malloc_trim() -> Optional[Callable[[int], int]]:
    """glibc's ``malloc_trim``, or None off glibc (macOS, musl, Windows)."""
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_freed_memory() -> bool:
    """Return malloc's free pages to the operating system; whether any were returned (False off glibc)."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
