"""Learning table of the advantage estimators: held-out exact match after the same number of PPO updates.

Two tasks: the demo's (``ppo_core.commands.demo``: the ``reverse`` dataset with the demo's options, a tiny
character-level GPT-2, the SFT warm start of ``examples/demo/sft.yaml``) and ``sort`` (the same options and SFT
recipe on the ``sort`` dataset of ppo-core-datasets), both with the demo's rule rewards (exact match, edit distance,
repetition penalty; the demo's learned reward is left out so that no reward-model stage is needed). One SFT start
per task (built once, seed 0) is shared by every run; each estimator then trains from it, per seed, and the result
is scored greedily on the held-out split.

    python benchmarks/estimators_learning.py [--task reverse|sort] [--updates 110 | --budget-s 60] [--seeds 0 1 2]
        [--estimators grpo rloo ...] [--set optim.lr=3e-4 ...]

Budget: ``--updates N`` (N updates of 64 samples for every estimator, the demo's learning rate decaying linearly
to 0 over the N) or ``--budget-s S`` (S seconds of updates each, constant learning rate: the number of updates a
budget allows is not known in advance). On a machine shared with other jobs a wall-clock budget buys each run
whatever the load leaves it, so ``--updates`` is the fair one there; the sec/update printed beside each estimator
(measured interleaved, below) gives the wall-clock equivalent.

Variants: gae-shared, gae-separate (PPO with a critic), grpo, dr_grpo, rloo (16 prompts x 4 samples),
reinforce_pp (64 prompts x 1): 64 samples an update for every one. Per seed, every variant's run is built at once
and they take one update each in turn (interleaved update by update) so that load from other processes falls on
all of them alike; each engine draws from its own generator, so a run's numbers do not depend on its neighbours.
Progress on stderr; ONE JSON line on stdout with every run and, per variant, the mean and spread (min, max) of
the held-out exact match and of the sec/update (each run's median), and the SFT start's exact match.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / ".bench" / "estimators"
SAMPLES_PER_UPDATE = 64
TASKS = ("reverse", "sort")  # the demo's dataset, and one more synthetic task with the same options
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


def task_configs(task: str, directory: Path) -> dict:
    """The demo's stage configs writing under ``directory``, on ``task``'s dataset with the demo's options."""
    from ppo_core.commands.demo import demo_configs

    configs = demo_configs(str(directory), 0)
    for stage in ("sft", "ppo"):
        configs[stage]["data"] = {**configs[stage]["data"], "dataset": task}
    return configs


def sft_start(task: str, steps: int, seed: int = 0) -> Path:
    """The demo's SFT warm start on ``task`` (init-model, then ``examples/demo/sft.yaml`` for ``steps`` steps), built
    once per task and step count under .bench/."""
    from ppo_core.commands.demo import FIXED_STEP_SFT
    from ppo_core.commands.sft import train_sft
    from ppo_core.config import load_config
    from ppo_core.modeling.tiny import init_model

    configs = task_configs(task, WORK / f"{task}-sft{steps}")
    final = Path(configs["sft"]["train"]["output_dir"]) / "final"
    if not (final / "model.safetensors").is_file():
        log(f"building the SFT start in {final}")
        init_model(configs["sft"]["model"]["path"], "tiny", seed=seed, overwrite=True)
        sft = load_config(None, [*FIXED_STEP_SFT, "train.progress=none", f"sft.steps={steps}"], base=configs["sft"])
        train_sft(sft, source="sft", overwrite=True)
    return final


def ppo_config(task: str, start: Path, variant: str, seed: int, run_dir: Path, updates: Optional[int],
               threads: int, overrides: tuple = ()):
    """The demo's ppo config on ``task`` from ``start``, rule rewards only, then the variant, then ``overrides``;
    the demo's linear learning-rate decay over ``updates``, or a constant learning rate when the budget is in
    seconds."""
    from ppo_core.config import load_config

    base = task_configs(task, WORK / "unused")["ppo"]
    base["model"] = {"path": str(start)}
    base["rewards"] = [r for r in base["rewards"] if r["name"] != "reward_model"]
    base["optim"] = {**base["optim"], "schedule": "linear" if updates else "constant"}
    base["train"] = {**base["train"], "seed": seed, "output_dir": str(run_dir), "progress": "none",
                     "threads": threads, "updates": updates or base["train"]["updates"]}
    return load_config(None, [*VARIANTS[variant], *overrides], base=base)


def train_interleaved(configs: dict, updates: Optional[int], budget_s: float, out: dict) -> dict:
    """Every variant's run built at once, then one PPO update of each in turn until each has made ``updates``
    updates (or spent ``budget_s`` seconds in updates); each policy saved to ``out[variant]``."""
    from ppo_core.commands.train import build_run, make_scorer, next_prompt_batch, save_policy
    from ppo_core.modeling.loading import fit_to_context

    with ExitStack() as stack:
        runs = {}
        for variant, config in configs.items():
            run = build_run(fit_to_context(config, config.model.path, "learning table"), source="learning table")
            stack.enter_context(run.composer)
            runs[variant] = (run, make_scorer(run.composer, run.tokenizer))
        seconds = {variant: [] for variant in runs}
        last = {}

        def finished(variant: str) -> bool:
            return len(seconds[variant]) >= updates if updates else sum(seconds[variant]) >= budget_s

        while not all(finished(variant) for variant in runs):
            for variant, (run, scorer) in runs.items():
                if not finished(variant):
                    started = time.perf_counter()
                    last[variant] = run.engine.step(next_prompt_batch(run), scorer)
                    seconds[variant].append(time.perf_counter() - started)
        for variant, (run, _) in runs.items():
            out[variant].mkdir(parents=True, exist_ok=True)
            save_policy(run, out[variant])
    return {variant: {"updates": len(seconds[variant]), "samples": SAMPLES_PER_UPDATE * len(seconds[variant]),
                      "train_s": round(sum(seconds[variant]), 1),
                      "sec_per_update": round(statistics.median(seconds[variant]), 4),
                      "last_reward_mean": round(last[variant].get("reward/mean", 0), 4),
                      "last_kl": round(last[variant].get("kl", 0), 4)}
            for variant in runs}


def held_out_exact_match(config, model_dir: Path) -> float:
    from ppo_core.commands.evaluate import evaluate_model

    numbers = evaluate_model(config, model_dir, decodings=("greedy",), source="learning table")
    return numbers["greedy"]["exact_match"]


def spread(values: list[float]) -> dict:
    return {"mean": round(statistics.mean(values), 4), "min": round(min(values), 4), "max": round(max(values), 4),
            "values": [round(v, 4) for v in values]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=TASKS, default="reverse", help="reverse: the demo's task")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--updates", type=int, help="PPO updates per run (linear learning-rate decay over them)")
    budget.add_argument("--budget-s", type=float, default=60.0, help="seconds of PPO updates per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--estimators", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sft-steps", type=int, default=330,
                        help="SFT steps of the start (330: the demo's before it stopped at a metric)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="ppo-core overrides for every variant, after its own (e.g. optim.lr=3e-4)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    start = sft_start(args.task, args.sft_steps)
    sft_exact = held_out_exact_match(
        ppo_config(args.task, start, "gae-shared", 0, WORK / "unused", args.updates, args.threads), start)
    log(f"{args.task} SFT start: held-out exact match {sft_exact:.3f}")
    runs = []
    for seed in args.seeds:
        run_dirs = {variant: WORK / "runs" / "-".join([args.task, variant, f"seed{seed}", *args.set])
                    for variant in args.estimators}
        configs = {variant: ppo_config(args.task, start, variant, seed, run_dirs[variant], args.updates,
                                       args.threads, args.set) for variant in args.estimators}
        trained = train_interleaved(configs, args.updates, args.budget_s,
                                    {variant: run_dirs[variant] / "final" for variant in args.estimators})
        for variant in args.estimators:
            exact = held_out_exact_match(configs[variant], run_dirs[variant] / "final")
            runs.append({"variant": variant, "seed": seed, "exact_match": exact, **trained[variant]})
            log(f"{args.task} {variant} seed {seed}: exact match {exact:.3f} after {trained[variant]['updates']} "
                f"updates ({trained[variant]['train_s']} s, {trained[variant]['sec_per_update']} s/update)")
    table = {variant: {key: spread([r[key] for r in runs if r["variant"] == variant])
                       for key in ("exact_match", "updates", "sec_per_update", "train_s")}
             for variant in args.estimators}
    result = {"task": args.task, "updates": args.updates, "budget_s": None if args.updates else args.budget_s,
              "seeds": args.seeds, "sft_steps": args.sft_steps, "threads": args.threads, "overrides": args.set,
              "sft_exact_match": sft_exact, "table": table, "runs": runs}
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
