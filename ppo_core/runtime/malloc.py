"""Give the memory of freed tensors back to the system (glibc's malloc).

torch allocates CPU tensors with malloc. glibc serves a block over its mmap threshold (128 KiB at first) from a
mapping of its own, unmapped when freed; but each time such a block is freed it raises the threshold to that
block's size (up to 32 MiB), so after the first minibatch every activation comes from the heap, and freed heap
memory in the middle of it stays in the process. On PPO with the medium model that kept memory was ~350 MiB of the
peak RSS beside ~300-500 MiB of live tensors (README, "Memory"). Fixing the threshold (``mallopt``, which also
turns the raising off) maps every block over it on its own, so the RSS follows the live bytes.

Off glibc nothing is done. The user's own choice stands: with ``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_`` or a ``glibc.malloc`` entry in ``GLIBC_TUNABLES`` set, glibc already applied it at start;
``PPO_CORE_MALLOC=glibc`` keeps glibc's own behaviour.
"""

from __future__ import annotations

import ctypes
import os

MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's own starting threshold, held fixed
_M_MMAP_THRESHOLD = -3  # mallopt parameters, from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
OPT_OUT = "PPO_CORE_MALLOC"


def user_chose_malloc_settings(environ=os.environ) -> bool:
    """Whether the environment sets glibc's malloc thresholds itself or asks ppo-core to leave malloc alone."""
    return (environ.get(OPT_OUT) == "glibc" or "MALLOC_MMAP_THRESHOLD_" in environ
            or "MALLOC_TRIM_THRESHOLD_" in environ or "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""))


def _glibc():
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
        return ctypes.CDLL("libc.so.6")
    except (ValueError, OSError, AttributeError):  # not glibc, or no confstr on this platform
        return None


def return_freed_memory() -> bool:
    """Fix glibc's mmap and trim thresholds at 128 KiB unless the user chose (module docstring); whether set."""
    if user_chose_malloc_settings():
        return False
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, MMAP_THRESHOLD_BYTES))
