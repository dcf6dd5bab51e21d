"""PPO driven by a learned reward from the demo's SFT start, over several seeds: held-out numbers before and after.

    python benchmarks/learned_reward_ppo.py --config examples/demo-learned-reward/ppo.yaml \
        [--seeds 0,1,2] [--set KEY=VALUE ...] [--out FILE]

The config's ``model.path`` is the SFT start and its reward model must already be trained (the example's
header says how). For each seed the PPO stage runs with ``train.seed`` set and its own output directory
(``<train.output_dir>-seed<N>``); the SFT start and each PPO result are then evaluated on the task's eval split,
greedy and sampled (the config's generation). Prints one JSON line per seed (also appended to ``--out``): exact
match, eos rate and mean response length of both decodings, before and after, and the wall and CPU seconds, then
a summary line with the mean, min and max over the seeds.

``ppo-core demo --learned-reward --seeds 0 1 2`` runs the same configuration with every stage per seed (its own
SFT start and reward model too) and writes the numbers into its report; this script varies the PPO seed alone.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

# as the ppo-core command does (ppo_core/runtime/cpu.py): idle OpenMP threads sleep on a shared machine
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ppo_core.commands.demo_report import spread as over_seeds  # noqa: E402
from ppo_core.commands.evaluate import evaluate_model  # noqa: E402
from ppo_core.commands.train import train  # noqa: E402
from ppo_core.config import load_config  # noqa: E402
from reward_model_accuracy import emit  # noqa: E402  (the script's own folder is on sys.path)

DECODINGS = ("greedy", "sampled")
NUMBERS = ("exact_match", "eos_rate", "length_mean")


def summary(numbers: dict[str, Any]) -> dict[str, Any]:
    return {decoding: {key: numbers[decoding][key] for key in NUMBERS} for decoding in DECODINGS}


def run_seed(config_path: str, seed: int, overrides: list[str]) -> dict[str, Any]:
    base = load_config(config_path, overrides)
    output_dir = f"{base.train.output_dir}-seed{seed}"
    config = load_config(config_path, [*overrides, f"train.seed={seed}", f"train.output_dir={output_dir}"])
    started, cpu_started = time.perf_counter(), time.process_time()
    final = train(config, source=config_path, overwrite=True)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    before = evaluate_model(config, config.model.path, source=config_path)
    after = evaluate_model(config, final, source=config_path)
    return {"seed": seed, "sft": summary(before), "ppo": summary(after), "ppo_s": round(seconds, 1),
            "ppo_cpu_s": round(cpu_seconds, 1), "load_average": os.getloadavg()[0]}


def spread(lines: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, min and max over the seeds of each number."""
    out: dict[str, Any] = {}
    for model in ("sft", "ppo"):
        for decoding in DECODINGS:
            for key in NUMBERS:
                numbers = over_seeds([line[model][decoding][key] for line in lines])
                out[f"{model}/{decoding}/{key}"] = {**numbers, "mean": round(numbers["mean"], 4)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a PPO run config (e.g. examples/demo-learned-reward/ppo.yaml)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated train.seed values")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--out", default=None, help="also append each JSON line to this file")
    args = parser.parse_args()
    lines = []
    for seed in (int(s) for s in args.seeds.split(",")):
        lines.append(run_seed(args.config, seed, args.set))
        emit({"config": args.config, "overrides": args.set, **lines[-1]}, args.out)
    emit({"config": args.config, "overrides": args.set, "seeds": len(lines), "spread": spread(lines)}, args.out)


if __name__ == "__main__":
    main()
