"""ppo-core asks OpenMP for sleeping, not spinning, waits (ppo_core/runtime/cpu.py), unless the user chose."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PRINT_POLICY = "import os, {first}; print(os.environ.get('OMP_WAIT_POLICY'))"


@pytest.mark.parametrize("first, preset, expected", [
    ("ppo_core", {}, "PASSIVE"),
    ("ppo_core.cli", {}, "PASSIVE"),
    ("ppo_core", {"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE"),  # the user's choice stands
    ("ppo_core", {"GOMP_SPINCOUNT": "300000"}, "None"),
    ("torch, ppo_core", {}, "None"),  # too late once torch (and libgomp) is loaded: left alone
])
def test_the_wait_policy_is_set_before_torch_loads_unless_the_user_chose_one(first, preset, expected):
    env = {key: value for key, value in os.environ.items() if key not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    done = subprocess.run([sys.executable, "-c", PRINT_POLICY.format(first=first)], env={**env, **preset},
                          capture_output=True, text=True, check=True, timeout=120)
    assert done.stdout.strip() == expected
