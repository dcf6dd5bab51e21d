"""What reward isolation costs, and what scoring while sampling gains back: PPO updates with every reward in its
own worker process (`isolation: process`) against the same rewards in the main process (`isolation: none`),
interleaved, in three modes:

- `none`: every reward in the main process, scored after sampling and the log-prob forwards;
- `process-serial`: in worker processes, but scored after sampling (`generation.score_while_sampling: false`);
- `process`: in worker processes, each generation chunk scored while the next is sampled (the default).

    python benchmarks/reward_isolation.py [--updates 5] [--rounds 3] [--chunk 16]

`--chunk` is `generation.batch_size` for every mode (the demo samples its 64 prompts in one chunk by default;
with 16 there are four chunks, and a chunk's scoring overlaps the sampling of the next).

Two workloads, each run as `ppo-core train` would (one subprocess per run, rounds interleaved, the order
inside a round alternating):

- `demo`: the demo's PPO config (examples/demo/ppo.yaml: the learned reward reading the reference hidden
  states, exact match, edit distance, repetition penalty; 64 rollouts per update) on a tiny model from
  `ppo-core init-model` and a reward model trained briefly on it (quality is beside the point here);
- `sleep50`: the same run with one reward that sleeps 50 ms per batch and scores 1.0.

Prints one JSON line: per workload and mode the medians over every update but each run's first (warm-up) of
the update time and of the scoring time left after sampling (`time/score_s`), the overhead of isolation
(process-serial - none), the overlap gain (process-serial - process), and the start-up of the run (plugins,
models, reward workers) as the wall time of the run minus its updates.
The models are cached in `.bench/isolation/`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ppo_core import Reward, hookimpl

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".bench" / "isolation"
MODES = ("none", "process-serial", "process")

RUN = r"""
import json, sys, time
sys.path.insert(0, sys.argv[3])
import reward_isolation as bench
from ppo_core.config import load_config
from ppo_core.commands.train import train
from ppo_core.runtime.metrics import read_metrics
config = load_config(sys.argv[1], json.loads(sys.argv[2]))
started = time.perf_counter()
train(config, overwrite=True, extra_plugins=[("bench_sleep", bench)])
total = time.perf_counter() - started
rows = read_metrics(config.train.output_dir + "/metrics.jsonl")
print(json.dumps({"update_s": [r["time/update_s"] for r in rows[1:]], "score_s": [r["time/score_s"] for r in rows[1:]],
                  "startup_s": total - sum(r["time/update_s"] for r in rows)}))
"""


class Sleep50(Reward):
    """Sleeps 50 ms per batch, scores 1.0 (a reward whose cost is not the transport's)."""

    name = "sleep50"

    def __call__(self, samples):
        time.sleep(0.05)
        return [1.0] * len(samples)


@hookimpl
def register_rewards(register):
    register(Sleep50)


def prepare_models() -> tuple[Path, Path]:
    """A tiny policy (init-model) and a reward model head trained briefly on its frozen backbone."""
    model, reward_model = CACHE / "model", CACHE / "reward-model"
    if not (model / "config.json").exists():
        from ppo_core.modeling.tiny import init_model

        init_model(model, "tiny", seed=0)
    if not (reward_model / "reward_model.json").exists():
        from ppo_core.commands.demo import QUICK, _with_overrides, demo_configs
        from ppo_core.commands.train_reward import run_train_reward
        from ppo_core.config.train_reward import TrainRewardConfig

        data = demo_configs(str(CACHE))["reward"]
        data["model"]["path"], data["output_dir"] = str(model), str(reward_model)
        run_train_reward(TrainRewardConfig.model_validate(_with_overrides(data, QUICK["reward"])),
                         source="benchmark reward config")
    return model, reward_model


def write_configs(directory: Path, model: Path, reward_model: Path, updates: int) -> dict[str, Path]:
    import yaml

    demo = yaml.safe_load((REPO / "examples" / "demo" / "ppo.yaml").read_text(encoding="utf-8"))
    demo["model"]["path"] = str(model)
    demo["rewards"][0]["options"]["path"] = str(reward_model)
    demo["train"].update({"updates": updates, "progress": "none", "output_dir": str(directory / "run")})
    sleep = {**demo, "rewards": [{"name": "sleep50"}]}
    paths = {}
    for name, config in (("demo", demo), ("sleep50", sleep)):
        paths[name] = directory / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return paths


def run_once(config: Path, mode: str, chunk: int | None) -> dict:
    import yaml

    count = len(yaml.safe_load(config.read_text(encoding="utf-8"))["rewards"])
    isolation = "none" if mode == "none" else "process"
    overrides = [f"rewards.{index}.isolation={isolation}" for index in range(count)]
    overrides.append(f"generation.score_while_sampling={'true' if mode == 'process' else 'false'}")
    if chunk:
        overrides.append(f"generation.batch_size={chunk}")
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "-c", RUN, str(config), json.dumps(overrides), str(Path(__file__).parent)],
                          capture_output=True, text=True, env=env, cwd=REPO, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarise(runs: dict[str, list[dict]]) -> dict:
    out = {}
    for mode, results in runs.items():
        out[mode] = {key: statistics.median(value for result in results for value in result[key])
                     for key in ("update_s", "score_s")}
        out[mode]["startup_s"] = statistics.median(result["startup_s"] for result in results)
    isolated, serial, none = out["process"], out["process-serial"], out["none"]
    out["isolation_overhead_per_update_s"] = serial["update_s"] - none["update_s"]
    out["overlap_gain_per_update_s"] = serial["update_s"] - isolated["update_s"]
    out["net_overhead_per_update_s"] = isolated["update_s"] - none["update_s"]
    out["overhead_startup_s"] = isolated["startup_s"] - none["startup_s"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=None, help="generation.batch_size (default: the whole batch)")
    args = parser.parse_args()

    model, reward_model = prepare_models()
    results: dict[str, dict[str, list[dict]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        configs = write_configs(Path(tmp), model, reward_model, args.updates)
        for pair in range(args.rounds):
            for workload, config in configs.items():
                for mode in (MODES if pair % 2 == 0 else MODES[::-1]):
                    print(f"round {pair + 1}/{args.rounds}: {workload} {mode}", file=sys.stderr)
                    results.setdefault(workload, {}).setdefault(mode, []).append(run_once(config, mode, args.chunk))
    summary = {workload: summarise(runs) for workload, runs in results.items()}
    print(json.dumps({"updates_per_run": args.updates, "rounds": args.rounds, "chunk": args.chunk,
                      "cpus": os.cpu_count(), **summary}))


if __name__ == "__main__":
    main()
