"""CPU threads that yield when the machine is shared.

torch's CPU kernels run in OpenMP (libgomp) thread teams whose threads, by default, spin between parallel regions.
When another job holds one of the cores, every region then waits for a thread that is not running: on the 2-core
machine a 2-thread run beside another 2-thread torch job was 3 to 50 times slower than quiet (benchmarks/contention.py
and benchmarks/README.md, "Sharing the CPU"). With ``OMP_WAIT_POLICY=PASSIVE`` waiting threads sleep instead; a quiet
machine runs as fast either way. libgomp reads the variable once, when torch loads it, so it is set before torch is
imported, and only when the user has not chosen a wait policy (``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``) already.
"""

from __future__ import annotations

import os
import sys


def prefer_passive_openmp_threads() -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user chose a policy or torch is loaded; whether it was set."""
    if "torch" in sys.modules or "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True
