"""Data parallel over torch.distributed on CPU (gloo): 2 ranks x B/2 rollouts give the update of 1 process x B; a
failing rank stops every rank with a named error; rank 0 alone writes. The ranks are separate processes started
with torchrun's environment variables (tests/dp_worker.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from dp_worker import equivalence_sections, run_updates

from ppo_core import cli
from ppo_core.config import load_config
from ppo_core.errors import ConfigError
from ppo_core.runtime.distributed import SINGLE_PROCESS, Distributed, combine_stats

from ppo_core.runtime.metrics import read_metrics
from ppo_core.testing import one_torch_thread

WORKER = Path(__file__).with_name("dp_worker.py")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_ranks(world_size: int, *command: str, timeout_s: float = 60) -> list[subprocess.Popen]:
    """``world_size`` processes of ``python command``, each with the variables torchrun would give it."""
    port = free_port()
    processes = []
    for rank in range(world_size):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
               "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "OMP_NUM_THREADS": "1", "PPO_CORE_DIST_TIMEOUT_S": str(timeout_s)}
        processes.append(subprocess.Popen([sys.executable, *command], env=env, text=True,
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


def test_one_process_collectives_are_the_identity():
    stats, values, tensor = {"kl": 0.5}, [1.0, 2.0], torch.ones(3)
    assert SINGLE_PROCESS.reduce_stats(stats) is stats and SINGLE_PROCESS.gather_values(values) is values
    assert SINGLE_PROCESS.all_reduce_sum(tensor) is tensor and SINGLE_PROCESS.shard(values) is values
    assert SINGLE_PROCESS.generator_states(tensor) == {"generator": tensor}


def test_statistics_combine_as_global_ones():
    ranks = [{"kl": 1.0, "response_tokens": 30.0, "value/mean": 1.0, "time/generate_s": 2.0, "reward/x/errors": 1.0},
             {"kl": 3.0, "response_tokens": 10.0, "value/mean": 5.0, "time/generate_s": 3.0, "reward/x/errors": 0.0}]
    assert combine_stats(ranks) == {"kl": 2.0, "response_tokens": 40.0, "value/mean": 2.0, "time/generate_s": 3.0,
                                    "reward/x/errors": 1.0}


def test_batch_sizes_that_do_not_split_over_the_ranks_are_named(tiny_model_dir, tmp_path):
    config = load_config(None, [], base=equivalence_sections(tiny_model_dir, tmp_path))
    local = Distributed(rank=1, world_size=2).local_ppo(config.ppo)
    assert (local.rollout_batch_size, local.minibatch_size, local.micro_batch_size) == (4, 4, 2)
    with pytest.raises(ConfigError, match=r"ppo.rollout_batch_size \(8\) must divide by the number of ranks \(3\)"):
        Distributed(rank=0, world_size=3).local_ppo(config.ppo)
    with pytest.raises(ConfigError, match=r"ppo.micro_batch_size \(2\) must divide each rank's minibatch"):
        Distributed(rank=0, world_size=8).local_ppo(config.ppo)


def test_resuming_on_another_number_of_ranks_is_named(tmp_path):
    states = {"generator": torch.zeros(2), "generator_rank1": torch.ones(2)}
    assert torch.equal(Distributed(rank=1, world_size=2).own_generator_state(states, tmp_path), torch.ones(2))
    with pytest.raises(ConfigError, match="written by 2 rank.s. and this run has 1"):
        SINGLE_PROCESS.own_generator_state(states, tmp_path)


def test_only_train_runs_under_torchrun(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert cli.main(["sft", str(tmp_path / "run.yaml")]) == 2
    assert "only `ppo-core train` runs under torchrun" in capsys.readouterr().err


def two_ranks_and_one_process(mode: str, model_dir: Path, tmp_path: Path) -> tuple[dict, list[dict], Path]:
    """The worker's ``mode`` on 2 ranks and, meanwhile, the one-process run in this process: its result, the
    ranks' (OUT.rank<r>) and OUT."""
    out = tmp_path / "ranks"
    processes = start_ranks(2, str(WORKER), mode, str(model_dir), str(tmp_path / "run2"), str(out))
    with one_torch_thread():
        one = run_updates(model_dir, tmp_path / "run1")
    results = finish(processes)
    assert all(code == 0 for code, _ in results), results
    return one, [torch.load(f"{out}.rank{r}", weights_only=False) for r in range(2)], out


def test_two_ranks_give_the_one_process_update(tiny_model_dir, tmp_path):
    one, ranks, _ = two_ranks_and_one_process("updates", tiny_model_dir, tmp_path)

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
@pytest.mark.parametrize("mode", ["failing", "failing_fsdp"])
def test_a_failing_rank_stops_every_rank_with_a_named_error(tiny_model_dir, tmp_path, mode):
    started = time.monotonic()
    processes = start_ranks(2, str(WORKER), mode, str(tiny_model_dir), str(tmp_path / "run"), timeout_s=60)
    (code0, err0), (code1, err1) = finish(processes, timeout=180)
    elapsed = time.monotonic() - started
    print(f"after {elapsed:.1f} s:\n{err0.strip()}\n{err1.strip()}")
    assert code1 == 2 and "failing on rank 1 on purpose" in err1, err1  # the rank at fault names its fault
    assert code0 == 2 and "rank 0 of 2" in err0 and "another rank stopped" in err0, err0  # the others say why
    assert "Traceback" not in err0 + err1
    assert elapsed < 120  # well before the collectives' own time limit would have run out twice


def cli_config(model_dir: Path, run_dir: Path, path: Path, parallel: str = "ddp") -> Path:
    config = {
        "model": {"path": str(model_dir), "device": "cpu"},
        "data": {"dataset": "reverse", "options": {"size": 64}},
        "rewards": [{"name": "edit_distance", "isolation": "none", "normalize": True}],
        "ppo": {"rollout_batch_size": 4, "minibatch_size": 2, "epochs": 1},
        "generation": {"max_new_tokens": 6},
        "train": {"updates": 8, "save_every": 2, "output_dir": str(run_dir), "progress": "none", "seed": 0,
                  "parallel": parallel},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def without_timing(lines: list[dict]) -> list[dict]:
    return [{k: v for k, v in line.items() if not k.startswith(("time/", "tokens_per_s"))} for line in lines]


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_sigkill_of_one_rank_then_resume_gives_the_uninterrupted_run(tiny_model_dir, tmp_path, parallel):
    """The uninterrupted run under torchrun itself; the interrupted one loses rank 1 to a SIGKILL after its first
    checkpoint (rank 0 then stops with a named error), and --resume on 2 ranks finishes it: the same weights,
    bit for bit, and the same metrics lines. Only rank 0 wrote into the run directory and printed the final model. ``fsdp``: the same with
    sharded modules (its checkpoints are full, gathered to rank 0)."""
    reference = cli_config(tiny_model_dir, tmp_path / "reference", tmp_path / "reference.yaml", parallel)
    done = subprocess.run([str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc-per-node", "2",
                           "-m", "ppo_core", "train", str(reference)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("final model: ") == 1, done.stdout  # rank 0 says where it wrote it, once
    assert sorted(p.name for p in (tmp_path / "reference").iterdir()) == [
        ".ppo-core-run", ".ppo-core.lock", "checkpoints", "config.yaml", "final", "metrics.jsonl"]

    config = cli_config(tiny_model_dir, tmp_path / "run", tmp_path / "run.yaml", parallel)
    ranks = start_ranks(2, "-m", "ppo_core", "train", str(config))
    first = tmp_path / "run" / "checkpoints" / "update-000002"
    while not first.exists() and ranks[1].poll() is None:
        time.sleep(0.05)
    ranks[1].send_signal(signal.SIGKILL)
    (code0, err0), (code1, _) = finish(ranks)
    assert code1 == -signal.SIGKILL, "rank 1 ended before it could be killed"
    assert code0 == 2 and "rank 0 of 2" in err0 and "Traceback" not in err0, err0
    assert len(read_metrics(tmp_path / "run" / "metrics.jsonl")) < 8

    resumed = finish(start_ranks(2, "-m", "ppo_core", "train", str(config), "--resume"))
    assert all(code == 0 for code, _ in resumed), resumed
    final, expected = (load_file(d / "final" / "model.safetensors") for d in (tmp_path / "run", tmp_path / "reference"))
    assert final.keys() == expected.keys() and all(torch.equal(final[k], expected[k]) for k in final)
    assert without_timing(read_metrics(tmp_path / "run" / "metrics.jsonl")) == without_timing(
        read_metrics(tmp_path / "reference" / "metrics.jsonl"))
