"""Throughput of the rule rewards (distribution ``ppo-core-rewards``): samples scored per second.

Builds N short random samples (seeded), times each reward over several repeats, and prints ONE JSON line:
the median samples/second per reward configuration and whether it meets the target (100,000/s).

    python benchmarks/reward_throughput.py [--n 200000] [--repeats 5] [--seed 0]

The rewards are built through the real plugin path (entry points -> registry -> validated options).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time

from ppo_core import RunContext, Sample
from ppo_core.plugin.loading import load_plugins

TARGET = 100_000

WORDS = ["the", "cat", "sat", "on", "mat", "answer", "is", "42", "Paris", "héllo", "你好", "so", "we", "get", "x"]

# name shown in the output -> (reward, options)
CONFIGS: dict[str, tuple[str, dict]] = {
    "edit_distance": ("edit_distance", {}),
    "edit_distance[extract,casefold,collapse]": (
        "edit_distance",
        {"extract": r"answer is (\S+)", "casefold": True, "collapse_whitespace": True},
    ),
    "exact_match": ("exact_match", {}),
    "exact_match[extract,casefold,collapse]": (
        "exact_match",
        {"extract": r"answer is (\S+)", "casefold": True, "collapse_whitespace": True},
    ),
    "repetition_penalty": ("repetition_penalty", {}),
    "repetition_penalty[word,n=2,include_prompt]": (
        "repetition_penalty",
        {"level": "word", "n": 2, "include_prompt": True},
    ),
}


def make_samples(n: int, seed: int) -> list[Sample]:
    """Short samples: 3-12 word responses (~15-60 chars), a 1-3 element solution, 8 samples per prompt."""
    rng = random.Random(seed)
    prompts = [" ".join(rng.choices(WORDS, k=rng.randint(5, 15))) for _ in range(max(1, n // 8))]
    samples = []
    for i in range(n):
        response = " ".join(rng.choices(WORDS, k=rng.randint(3, 12)))
        solutions = [rng.choice(WORDS) for _ in range(rng.randint(1, 3))]
        samples.append(
            Sample(
                prompt=prompts[i // 8 % len(prompts)],
                response=response,
                response_ids=tuple(range(len(response))),
                solution=solutions[0] if len(solutions) == 1 else solutions,
                stop_reason="eos",
            )
        )
    return samples


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="number of samples (default 200000)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per reward (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    registry = load_plugins(allow=["rule_rewards"]).registry
    samples = make_samples(args.n, args.seed)
    results = {}
    for label, (name, options) in CONFIGS.items():
        reward = registry.build("reward", name, options, RunContext())
        reward(samples[:1000])  # warm-up
        rates = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            values = reward(samples)
            elapsed = time.perf_counter() - start
            assert len(values) == len(samples)
            rates.append(len(samples) / elapsed)
        median = statistics.median(rates)
        results[label] = {"samples_per_second": round(median), "meets_target": median >= TARGET}
    report = {
        "benchmark": "reward_throughput",
        "n": args.n,
        "repeats": args.repeats,
        "seed": args.seed,
        "target_samples_per_second": TARGET,
        "python": platform.python_version(),
        "rewards": results,
        "all_meet_target": all(r["meets_target"] for r in results.values()),
    }
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
