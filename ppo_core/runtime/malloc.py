"""Give the memory of freed tensors back to the system (glibc's malloc), when asked: ``PPO_CORE_MALLOC=release``.

torch allocates CPU tensors with malloc. glibc serves a block over its mmap threshold (128 KiB at first) from a
mapping of its own, unmapped when freed; but each time such a block is freed it raises the threshold to that
block's size (up to 32 MiB), so after the first minibatch every activation comes from the heap, and freed heap
memory in the middle of it stays in the process. On PPO with the medium model that kept memory was 70-170 MiB of
the peak RSS (README, "Memory"). Fixing the threshold (``mallopt``, which also turns the raising off) maps every
block over it on its own, so the RSS follows the live bytes; but every fresh mapping is page-faulted in again,
which cost 13% of the CPU time of a medium training step (README, "Memory"), so it is not the default.

Off glibc nothing is done, and the user's own ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or
``glibc.malloc`` entry in ``GLIBC_TUNABLES`` (which glibc applied at start) stands.
"""

from __future__ import annotations

import ctypes
import os

MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's own starting threshold, held fixed
_M_MMAP_THRESHOLD = -3  # mallopt parameters, from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
SWITCH = "PPO_CORE_MALLOC"


def release_requested(environ=os.environ) -> bool:
    """Whether the environment asks for ``PPO_CORE_MALLOC=release`` and sets no malloc threshold of its own."""
    own = ("MALLOC_MMAP_THRESHOLD_" in environ or "MALLOC_TRIM_THRESHOLD_" in environ
           or "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""))
    return environ.get(SWITCH) == "release" and not own


def _glibc():
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
        return ctypes.CDLL("libc.so.6")
    except (ValueError, OSError, AttributeError):  # not glibc, or no confstr on this platform
        return None


def return_freed_memory() -> bool:
    """Fix glibc's mmap and trim thresholds at 128 KiB when asked (module docstring); whether they were set."""
    if not release_requested():
        return False
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, MMAP_THRESHOLD_BYTES))
