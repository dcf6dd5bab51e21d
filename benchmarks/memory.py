"""Peak memory and speed of PPO with LoRA adapters (``model.lora``) against full fine-tuning, interleaved.

    python benchmarks/lora_memory.py [--size medium] [--updates 3] [--rounds 3] [--rank 8]

The workload is benchmarks/ppo_throughput.py's (the TRL baseline's: 64 rollouts of at most 32 new tokens, 4 epochs
x 4 minibatches of 16, a random GPT-2 ``small`` 4x256 or ``medium`` 6x512, the shared critic), built by its
``make_config``; LoRA puts rank-``--rank`` adapters on every linear layer (``target_modules: all-linear``). Each run
is its own subprocess, so its peak RSS (``ru_maxrss``) is its own; the rounds alternate the order (full, lora /
lora, full). Besides the peak, each run reports its RSS right after importing torch and transformers and building
nothing (``base_rss_mib``), so that the part the model, its reference, gradients, optimizer state and activations
take (``peak - base``) can be compared too.

Prints one JSON line: medians per mode of peak RSS, peak - base, sec/update, and the ratios lora / full.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

RUN = r"""
import argparse, json, resource, sys, time
sys.path.insert(0, sys.argv[1])
settings = json.loads(sys.argv[2])
import torch, transformers  # noqa: F401  (the base every run pays)
base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
import ppo_throughput as bench
from ppo_core.commands.train import build_run, make_scorer, next_prompt_batch
from ppo_core.config import load_config
args = argparse.Namespace(critic="shared", max_new_tokens=32, updates=settings["updates"], seed=0, threads=2)
config = bench.make_config(bench.model_dir(settings["size"], 128), args)
if settings["lora"]:
    rank = settings["rank"]
    config = load_config(None, [f"model.lora={{r: {rank}, alpha: {2 * rank}, target_modules: all-linear}}"],
                         base=config.model_dump(mode="json"))
run = build_run(config)
scorer = make_scorer(run.composer, run.tokenizer)
seconds = []
for _ in range(settings["updates"]):
    batch = next_prompt_batch(run)
    started = time.perf_counter()
    run.engine.step(batch, scorer)
    seconds.append(time.perf_counter() - started)
run.composer.close()
trained = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
print(json.dumps({"peak_rss_mib": peak, "base_rss_mib": base_rss, "sec_per_update": seconds[1:] or seconds,
                  "trained_parameters": trained}))
"""


def run_once(mode: str, args) -> dict:
    settings = {"lora": mode == "lora", "size": args.size, "updates": args.updates, "rank": args.rank}
    done = subprocess.run([sys.executable, "-c", RUN, str(HERE), json.dumps(settings)], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["small", "medium"], default="medium")
    parser.add_argument("--updates", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rank", type=int, default=8)
    args = parser.parse_args()
    modes = ("full", "lora")
    runs: dict[str, list[dict]] = {mode: [] for mode in modes}
    for round_ in range(args.rounds):
        for mode in (modes if round_ % 2 == 0 else modes[::-1]):
            runs[mode].append(run_once(mode, args))
            last = runs[mode][-1]
            print(f"round {round_ + 1}/{args.rounds} {mode}: peak {last['peak_rss_mib']:.0f} MiB, "
                  f"{statistics.median(last['sec_per_update']):.2f} s/update", file=sys.stderr, flush=True)
    summary = {}
    for mode, results in runs.items():
        summary[mode] = {
            "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in results),
            "above_base_mib": statistics.median(r["peak_rss_mib"] - r["base_rss_mib"] for r in results),
            "sec_per_update": statistics.median(s for r in results for s in r["sec_per_update"]),
            "trained_parameters": results[0]["trained_parameters"],
        }
    ratios = {f"lora_over_full_{key}": round(summary["lora"][key] / summary["full"][key], 3)
              for key in ("peak_rss_mib", "above_base_mib", "sec_per_update")}
    print(json.dumps({"size": args.size, "updates": args.updates, "rounds": args.rounds, "rank": args.rank,
                      **summary, **ratios}))


if __name__ == "__main__":
    main()
