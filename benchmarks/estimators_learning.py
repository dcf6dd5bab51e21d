"""Learning table of the advantage estimators: held-out exact match after the same wall-clock budget.

The task is the demo's (``ppo_core.commands.demo``: the ``reverse`` dataset with the demo's options, a tiny
character-level GPT-2, the SFT warm start of ``examples/demo/sft.yaml``) with the demo's rule rewards (exact match,
edit distance, repetition penalty; the demo's learned reward is left out so that no reward-model stage is needed).
One SFT start (built once, seed 0) is shared by every run; each estimator then trains for the same wall-clock
budget from it, per seed, with a constant learning rate (the number of updates a budget allows is not known in
advance, so no schedule can decay to 0 at the end), and the result is scored greedily on the held-out split.

    python benchmarks/estimators_learning.py [--budget-s 60] [--seeds 0 1 2] [--estimators gae-shared grpo ...]

Variants: gae-shared, gae-separate (PPO with a critic), grpo, dr_grpo, rloo (16 prompts x 4 samples),
reinforce_pp (64 prompts x 1): 64 samples an update for every one. Runs are interleaved (seed by seed, every
variant in turn) so that load from other processes spreads over all of them. Progress on stderr; ONE JSON line on
stdout with every run and, per variant, the mean and spread (min, max) of the held-out exact match, and the
SFT start's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / ".bench" / "estimators"
VARIANTS = {  # name: ppo-core overrides on the demo's ppo config
    "gae-shared": ["model.critic=shared"],
    "gae-separate": ["model.critic=separate"],
    "grpo": ["ppo.advantage=grpo", "ppo.rollout_batch_size=16", "ppo.samples_per_prompt=4"],
    "dr_grpo": ["ppo.advantage=dr_grpo", "ppo.rollout_batch_size=16", "ppo.samples_per_prompt=4"],
    "rloo": ["ppo.advantage=rloo", "ppo.rollout_batch_size=16", "ppo.samples_per_prompt=4"],
    "reinforce_pp": ["ppo.advantage=reinforce_pp"],
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def sft_start(steps: int, seed: int = 0) -> Path:
    """The demo's SFT warm start (init-model, then ``examples/demo/sft.yaml`` for ``steps`` steps), built once per
    step count under .bench/."""
    from ppo_core.commands.demo import demo_configs
    from ppo_core.commands.sft import train_sft
    from ppo_core.config import load_config
    from ppo_core.modeling.tiny import init_model

    configs = demo_configs(str(WORK / f"demo-sft{steps}"), seed)
    final = Path(configs["sft"]["train"]["output_dir"]) / "final"
    if not (final / "model.safetensors").is_file():
        log(f"building the SFT start in {final}")
        init_model(configs["sft"]["model"]["path"], "tiny", seed=seed, overwrite=True)
        sft = load_config(None, ["train.progress=none", f"sft.steps={steps}"], base=configs["sft"])
        train_sft(sft, source="sft", overwrite=True)
    return final


def ppo_config(start: Path, variant: str, seed: int, run_dir: Path):
    """The demo's ppo config from ``start``, rule rewards only, constant learning rate, then the variant."""
    from ppo_core.commands.demo import demo_configs
    from ppo_core.config import load_config

    base = demo_configs(str(WORK / "demo"), 0)["ppo"]
    base["model"] = {"path": str(start)}
    base["rewards"] = [r for r in base["rewards"] if r["name"] != "reward_model"]
    base["optim"] = {**base["optim"], "schedule": "constant"}
    base["train"] = {**base["train"], "seed": seed, "output_dir": str(run_dir), "progress": "none"}
    return load_config(None, VARIANTS[variant], base=base)


def train_for(config, budget_s: float, out: Path) -> dict:
    """PPO updates until ``budget_s`` seconds of updates have passed; the policy saved to ``out``."""
    from ppo_core.commands.train import build_run, make_scorer, next_prompt_batch, save_policy
    from ppo_core.modeling.loading import fit_to_context

    run = build_run(fit_to_context(config, config.model.path, "learning table"), source="learning table")
    with run.composer:
        scorer = make_scorer(run.composer, run.tokenizer)
        spent, updates, last = 0.0, 0, {}
        while spent < budget_s:
            started = time.perf_counter()
            last = run.engine.step(next_prompt_batch(run), scorer)
            spent += time.perf_counter() - started
            updates += 1
    out.mkdir(parents=True, exist_ok=True)
    save_policy(run, out)
    return {"updates": updates, "train_s": round(spent, 1), "last_reward_mean": round(last.get("reward/mean", 0), 4)}


def held_out_exact_match(config, model_dir: Path) -> float:
    from ppo_core.commands.evaluate import evaluate_model

    numbers = evaluate_model(config, model_dir, decodings=("greedy",), source="learning table")
    return numbers["greedy"]["exact_match"]


def spread(values: list[float]) -> dict:
    return {"mean": round(statistics.mean(values), 4), "min": round(min(values), 4), "max": round(max(values), 4),
            "values": [round(v, 4) for v in values]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-s", type=float, default=60.0, help="seconds of PPO updates per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--estimators", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sft-steps", type=int, default=330, help="SFT steps of the start (the demo's: 330)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    start = sft_start(args.sft_steps)
    sft_exact = held_out_exact_match(ppo_config(start, "gae-shared", 0, WORK / "unused"), start)
    log(f"SFT start: held-out exact match {sft_exact:.3f}")
    runs = []
    for seed in args.seeds:
        for variant in args.estimators:
            run_dir = WORK / "runs" / f"{variant}-seed{seed}"
            config = ppo_config(start, variant, seed, run_dir)
            trained = train_for(config, args.budget_s, run_dir / "final")
            exact = held_out_exact_match(config, run_dir / "final")
            runs.append({"variant": variant, "seed": seed, "exact_match": exact, **trained})
            log(f"{variant} seed {seed}: exact match {exact:.3f} after {trained['updates']} updates "
                f"({trained['train_s']} s)")
    table = {variant: {"exact_match": spread([r["exact_match"] for r in runs if r["variant"] == variant]),
                       "updates": spread([r["updates"] for r in runs if r["variant"] == variant])}
             for variant in args.estimators}
    result = {"task": "demo (reverse, rule rewards)", "budget_s": args.budget_s, "seeds": args.seeds,
              "sft_steps": args.sft_steps,
              "sft_exact_match": sft_exact, "table": table, "runs": runs}
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
