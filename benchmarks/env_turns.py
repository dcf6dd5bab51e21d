"""The cost of turns: seconds per PPO update of 3-turn environment episodes against one turn making as many
tokens, and the 3-turn episodes with and without continuing the sampler's KV cache across turns.

    python benchmarks/env_turns.py [--size small] [--updates 4] [--turn-tokens 16] [--batch 16] [--threads 2]

Workload: GPT-2 `small` of ppo_core.modeling.tiny (random weights, seed 0, 256 positions), the `reverse` prompts,
``--batch`` episodes per update, 2 epochs of 2 minibatches. The 3-turn environment answers every turn with the
same observation (12 characters = 12 tokens) and ends after the third; each turn samples up to ``--turn-tokens``
tokens. The one-turn case samples up to 3 x ``--turn-tokens`` (the same action tokens, no observations).
Environment and reward run in-process (no worker processes), so the numbers are the engine's. The cases run
interleaved, one update each in turn after a warm-up update; prints one JSON line with the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from ppo_core import EnvReset, EnvStep, Environment, Reward, hookimpl
from ppo_core.commands.train import build_run, make_scorer, next_prompt_batch
from ppo_core.config import load_config
from ppo_core.modeling.tiny import init_model

OBSERVATION = " try again! "


class ThreeTurns(Environment):
    name = "three_turns"

    def reset(self, records):
        return EnvReset(states=[0] * len(records), prompts=[list(r.messages) for r in records])

    def step(self, states, responses):
        states = [turn + 1 for turn in states]
        done = [turn >= 3 for turn in states]
        return EnvStep(states=states, observations=[None if d else OBSERVATION for d in done],
                       rewards=[0.0] * len(states), done=done)


class OneTurn(ThreeTurns):
    name = "one_turn"

    def step(self, states, responses):
        n = len(states)
        return EnvStep(states=list(states), observations=[None] * n, rewards=[0.0] * n, done=[True] * n)


class LengthShare(Reward):
    name = "length_share"

    def __call__(self, samples):
        return [len(s.response) / 64 for s in samples]


class BenchPlugin:
    @hookimpl
    def register_environments(self, register):
        register(ThreeTurns)
        register(OneTurn)

    @hookimpl
    def register_rewards(self, register):
        register(LengthShare)


def make_run(model: Path, workdir: Path, environment: str, turn_tokens: int, batch: int, reuse_cache: bool):
    turns = 3 if environment == "three_turns" else 1
    max_new = turn_tokens * (3 // turns)
    config = load_config(None, base={
        "model": {"path": str(model)},
        "data": {"dataset": "reverse", "max_prompt_tokens": 32},
        "rewards": [{"name": "length_share", "isolation": "none"}],
        "environment": {"name": environment, "max_turns": turns, "isolation": "none",
                        "max_episode_tokens": 3 * turn_tokens + 2 * len(OBSERVATION)},
        "ppo": {"rollout_batch_size": batch, "minibatch_size": batch // 2, "epochs": 2},
        "generation": {"max_new_tokens": max_new},
        "train": {"output_dir": str(workdir / environment), "progress": "none", "seed": 0},
        "plugins": {"allow": ["bench", "datasets"]},
    })
    run = build_run(config, [("bench", BenchPlugin())])
    run.episodes.reuse_cache = reuse_cache
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small")
    parser.add_argument("--updates", type=int, default=4)
    parser.add_argument("--turn-tokens", type=int, default=16)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model = init_model(workdir / "model", args.size, seed=0, n_positions=256)
        cases = {
            "one_turn": make_run(model, workdir, "one_turn", args.turn_tokens, args.batch, True),
            "three_turns_cache": make_run(model, workdir, "three_turns", args.turn_tokens, args.batch, True),
            "three_turns_reencode": make_run(model, workdir, "three_turns", args.turn_tokens, args.batch, False),
        }
        times: dict[str, dict[str, list[float]]] = {name: {"update_s": [], "generate_s": [], "tokens": []}
                                                    for name in cases}
        for update in range(args.updates + 1):
            for name, run in cases.items():
                stats = run.engine.step(next_prompt_batch(run), make_scorer(run.composer, run.tokenizer))
                if update == 0:
                    continue  # warm-up
                times[name]["update_s"].append(stats["time/rollout_s"] + stats["time/train_s"])
                times[name]["generate_s"].append(stats["time/generate_s"])
                times[name]["tokens"].append(stats["response_tokens"] / args.batch)
        result = {"size": args.size, "batch": args.batch, "turn_tokens": args.turn_tokens, "updates": args.updates}
        for name, measured in times.items():
            result[name] = {key: round(statistics.median(values), 3) for key, values in measured.items()}
        print(json.dumps(result))


if __name__ == "__main__":
    main()
