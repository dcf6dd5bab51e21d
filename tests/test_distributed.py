"""Data parallel over torch.distributed on CPU (gloo): 2 ranks x B/2 rollouts give the update of 1 process x B; a
failing rank stops every rank with a named error; rank 0 alone writes. The ranks are separate processes started
with torchrun's environment variables (tests/dp_worker.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dp_worker import run_updates

from ppo_core.testing import one_torch_thread

WORKER = Path(__file__).with_name("dp_worker.py")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_ranks(world_size: int, *args: str, timeout_s: float = 60) -> list[subprocess.Popen]:
    """``world_size`` processes of ``dp_worker.py args``, each with the variables torchrun would give it."""
    port = free_port()
    processes = []
    for rank in range(world_size):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
               "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "OMP_NUM_THREADS": "1", "PPO_CORE_DIST_TIMEOUT_S": str(timeout_s)}
        processes.append(subprocess.Popen([sys.executable, str(WORKER), *args], env=env, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    return processes


def finish(processes: list[subprocess.Popen], timeout: float = 240) -> list[tuple[int, str]]:
    results = []
    for process in processes:
        try:
            _, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in processes:
                p.kill()
            raise
        results.append((process.returncode, stderr))
    return results


def max_weight_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_two_ranks_give_the_one_process_update(tiny_model_dir, tmp_path):
    out = tmp_path / "ranks"
    processes = start_ranks(2, "updates", str(tiny_model_dir), str(tmp_path / "run2"), str(out))
    with one_torch_thread():  # meanwhile, the one-process run in this process
        one = run_updates(tiny_model_dir, tmp_path / "run1")
    results = finish(processes)
    assert all(code == 0 for code, _ in results), results
    ranks = [torch.load(f"{out}.rank{r}", weights_only=False) for r in range(2)]

    assert max_weight_difference(ranks[0]["weights"], ranks[1]["weights"]) == 0.0  # the ranks agree exactly
    difference = max_weight_difference(one["weights"], ranks[0]["weights"])
    print(f"max |w_1 process - w_2 ranks| after 3 updates: {difference:.3g}")
    assert difference < 1e-5
    assert max_weight_difference(one["initial"], one["weights"]) > 1e-3  # and the updates did move them
    assert abs(one["kl_coef"] - ranks[0]["kl_coef"]) < 1e-6 and one["kl_coef"] != 0.05  # β moved, the same way
    for mine, theirs in zip(one["stats"], ranks[0]["stats"]):
        for key in ("kl", "score/mean", "reward/mean", "response_tokens", "value/mean", "loss/total", "entropy",
                    "grad_norm"):
            assert mine[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-5), key


@pytest.mark.slow
def test_a_failing_rank_stops_every_rank_with_a_named_error(tiny_model_dir, tmp_path):
    started = time.monotonic()
    processes = start_ranks(2, "failing", str(tiny_model_dir), str(tmp_path / "run"), timeout_s=60)
    (code0, err0), (code1, err1) = finish(processes, timeout=180)
    elapsed = time.monotonic() - started
    print(f"after {elapsed:.1f} s:\n{err0.strip()}\n{err1.strip()}")
    assert code1 == 2 and "failing on rank 1 on purpose" in err1, err1  # the rank at fault names its fault
    assert code0 == 2 and "rank 0 of 2" in err0 and "another rank stopped" in err0, err0  # the others say why
    assert "Traceback" not in err0 + err1
    assert elapsed < 120  # well before the collectives' own time limit would have run out twice
