"""Learning on the bundled environments: `ppo-core demo --env NAME` per seed, held-out success before and after.

Each seed runs the environment demo's whole pipeline (``ppo_core.commands.env_demo``: init-model with that seed,
the short SFT warm start on the environment's transcripts, PPO on its episodes, held-out evaluation of the SFT
start and the PPO result, greedy and sampled) and reads its report's numbers. Progress on stderr; ONE JSON line
on stdout: every run (success and return before/after per decoding, wall seconds) and, per environment and
decoding, the mean and spread (min, max) of the success before, after and of the gain. ``later_turns`` counts,
per model and decoding, the held-out episodes that went past their first turn (``played``; on
``retry_with_feedback``: a wrong first answer) and how many of those still succeeded (``solved``).

    python benchmarks/env_learning.py --envs calculator retry_with_feedback --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / ".bench" / "env-learning"
DECODINGS = ("greedy", "sampled")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_once(env: str, seed: int, overrides: list[str]) -> dict:
    from ppo_core.commands import env_demo

    out = WORK / f"{env}-seed{seed}"
    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the demo's stage lines: stdout holds the one JSON line
        env_demo.run_env_demo(env, str(out), overwrite=True, seed=seed, ppo_overrides=overrides)
    seconds = time.perf_counter() - started
    report = out / env_demo.REPORT_DIR
    before = json.loads((report / "eval_sft.json").read_text())
    after = json.loads((report / "eval_ppo.json").read_text())
    row = {"env": env, "seed": seed, "episodes": after["records"], "seconds": round(seconds, 1)}
    for decoding in DECODINGS:
        row[decoding] = {"success_before": before[decoding]["success_rate"],
                         "success_after": after[decoding]["success_rate"],
                         "return_before": before[decoding]["return_mean"],
                         "return_after": after[decoding]["return_mean"]}
    row["later_turns"] = {model: later_turns(report / f"samples_{model}.jsonl") for model in ("sft", "ppo")}
    return row


def later_turns(samples: Path) -> dict:
    """Per decoding: the episodes that went past their first turn, and how many of them succeeded."""
    counts = {decoding: {"played": 0, "solved": 0} for decoding in DECODINGS}
    for row in map(json.loads, samples.open(encoding="utf-8")):
        if len(row["turns"]) > 1:
            counts[row["decoding"]]["played"] += 1
            counts[row["decoding"]]["solved"] += bool(row["success"])
    return counts


def spread(values: list[float]) -> dict:
    return {"mean": round(statistics.fmean(values), 4), "min": round(min(values), 4), "max": round(max(values), 4)}


def summary(runs: list[dict]) -> dict:
    out: dict = {}
    for env in sorted({run["env"] for run in runs}):
        mine = [run for run in runs if run["env"] == env]
        out[env] = {"seconds": spread([run["seconds"] for run in mine])}
        for decoding in DECODINGS:
            before = [run[decoding]["success_before"] for run in mine]
            after = [run[decoding]["success_after"] for run in mine]
            out[env][decoding] = {"before": spread(before), "after": spread(after),
                                  "gain": spread([a - b for a, b in zip(after, before)])}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", nargs="+", default=["calculator", "retry_with_feedback"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], help="overrides of the PPO stage")
    args = parser.parse_args()
    runs = []
    for seed in args.seeds:  # seed by seed, every environment in turn: load from other processes spreads over all
        for env in args.envs:
            log(f"{env}, seed {seed}")
            runs.append(run_once(env, seed, args.overrides))
            log(json.dumps(runs[-1]))
    print(json.dumps({"runs": runs, "summary": summary(runs)}))


if __name__ == "__main__":
    main()
