"""How well each way of training the demo's reward model ranks held-out pairs, and what it costs.

    python benchmarks/reward_model_accuracy.py --sft DIR [--methods NAME,...] [--out FILE]
    python benchmarks/reward_model_accuracy.py --saved DIR[,DIR...] [--normalized] [--out FILE]

``--sft DIR`` is the demo's SFT start (``ppo-core init-model M --size tiny`` then ``ppo-core sft`` with the demo's
sft config, ``examples/demo/sft.yaml``, writes ``<output_dir>/final``). Every method trains on pairs made from the
demo task's train split (2000 words of 2-4 letters, ``ppo_core.commands.demo.TASK``) and is scored on the same
fixed test pairs: each word of the task's eval split (200 words never in the train split) against every corruption
of its reversal that exists (one letter substituted; two neighbours swapped or all letters shuffled: order; one
letter inserted or deleted: length). Prints one JSON line per method (and appends it to ``--out``): test pair
accuracy overall and per kind, train-reward's own held-out accuracy, and the training time in seconds.
``--saved`` scores reward models ``ppo-core train-reward`` already wrote (several: an ensemble of their mean raw
score; with ``--normalized`` of their mean normalised score, as the reward ``reward_model`` with a list of paths
scores) on the same test pairs, with the held-out accuracy stored in each.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from typing import Any, Optional

# as the ppo-core command does (ppo_core/runtime/cpu.py): idle OpenMP threads sleep on a shared machine
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from ppo_core.commands.demo import TASK, demo_configs
from ppo_core.commands.train_reward import load_config_data
from ppo_core.config.train_reward import CORRUPTIONS, TrainRewardConfig
from ppo_core.modeling.loading import load_tokenizer
from ppo_core.reward_model import corrupt, text_token_ids, train_reward_model
from ppo_core.reward_model.pairs import pair_kind
from ppo_core.reward_model.storage import load_reward_model
from ppo_core.reward_model.training import _ranked_right, accuracy_by_kind

ALL = list(CORRUPTIONS)
#: method -> overrides of the demo's reward config (``data``, ``train``; the demo's before this benchmark: a head
#: on the frozen SFT backbone, substitute and shuffle corruptions, 2 pairs per word, 20 epochs at lr 3e-3) and
#: how many heads (seeds 0, 1, ..., from ``first_seed``) an ensemble averages
METHODS: dict[str, dict[str, Any]] = {
    "frozen-demo": {},
    "frozen-varied": {"data": {"corruptions": ALL}},
    "frozen-varied-x8": {"data": {"corruptions": ALL, "pairs_per_record": 8}},
    "frozen-margin": {"data": {"corruptions": ALL}, "train": {"margin": 1.0}},
    "frozen-ensemble5": {"data": {"corruptions": ALL}, "heads": 5},
    "top1": {
        "data": {"corruptions": ALL},
        "train": {"train_backbone": True, "backbone_layers": 1, "epochs": 5, "lr": 1e-3}},
    "full": {
        "data": {"corruptions": ALL}, "train": {"train_backbone": True, "epochs": 5, "lr": 1e-3}},
    "full-20ep": {
        "data": {"corruptions": ALL}, "train": {"train_backbone": True, "epochs": 20, "lr": 1e-3}},
    "full-20ep-lr3e-3": {
        "data": {"corruptions": ALL}, "train": {"train_backbone": True, "epochs": 20, "lr": 3e-3}},
    "deeper2-x4": {
        "data": {"corruptions": ALL, "pairs_per_record": 4},
        "train": {"train_backbone": True, "added_layers": 2, "epochs": 5, "lr": 1e-3}},
    "full-x8": {
        "data": {"corruptions": ALL, "pairs_per_record": 8},
        "train": {"train_backbone": True, "epochs": 5, "lr": 1e-3}},
    "deeper2-x8": {
        "data": {"corruptions": ALL, "pairs_per_record": 8},
        "train": {"train_backbone": True, "added_layers": 2, "epochs": 5, "lr": 1e-3}},
    "full-x4-head512": {
        "data": {"corruptions": ALL, "pairs_per_record": 4},
        "train": {"train_backbone": True, "epochs": 5, "lr": 1e-3, "head_hidden": 512}},
    "full-x4-hard": {
        "data": {"corruptions": ["substitute", "swap", "insert"], "pairs_per_record": 4},
        "train": {"train_backbone": True, "epochs": 5, "lr": 1e-3}},
    "full-x4-15ep": {
        "data": {"corruptions": ALL, "pairs_per_record": 4},
        "train": {"train_backbone": True, "epochs": 15, "lr": 1e-3}},
    "full-x4-30ep": {
        "data": {"corruptions": ALL, "pairs_per_record": 4},
        "train": {"train_backbone": True, "epochs": 30, "lr": 1e-3}},
    "full-x4-60ep": {
        "data": {"corruptions": ALL, "pairs_per_record": 4},
        "train": {"train_backbone": True, "epochs": 60, "lr": 1e-3}},
    # substitutions drawn 3 times as often as each other kind (3/7 of the pairs), six pairs per word
    "full-x6-sub3-20ep": {
        "data": {"corruptions": ["substitute", "substitute", *ALL], "pairs_per_record": 6},
        "train": {"train_backbone": True, "epochs": 20, "lr": 1e-3}},
    "full-x6-sub4-35ep": {
        "data": {"corruptions": ["substitute", "substitute", "substitute", *ALL], "pairs_per_record": 6},
        "train": {"train_backbone": True, "epochs": 35, "lr": 1e-3}},
    # ... plus truncations and double edits (the answers a policy gaming the reward found), eight pairs per word:
    # examples/demo-learned-reward/train-reward.yaml
    "full-x8-sub4-trunc-25ep": {
        "data": {"corruptions": ["substitute", "substitute", "substitute", *ALL, "truncate", "double"],
                 "pairs_per_record": 8},
        "train": {"train_backbone": True, "epochs": 25, "lr": 1e-3}},
    # the head on the mean of the final hidden states over every token instead of the last one's, or on each token
    # with the scores summed (train.pool)
    "frozen-varied-mean": {"data": {"corruptions": ALL}, "train": {"pool": "mean"}},
    "full-x6-sub3-20ep-mean": {
        "data": {"corruptions": ["substitute", "substitute", *ALL], "pairs_per_record": 6},
        "train": {"train_backbone": True, "epochs": 20, "lr": 1e-3, "pool": "mean"}},
    "full-x4-sum": {
        "data": {"corruptions": ALL, "pairs_per_record": 4},
        "train": {"train_backbone": True, "epochs": 5, "lr": 1e-3, "pool": "sum"}},
    "full-x6-sub3-20ep-sum": {
        "data": {"corruptions": ["substitute", "substitute", *ALL], "pairs_per_record": 6},
        "train": {"train_backbone": True, "epochs": 20, "lr": 1e-3, "pool": "sum"}},
    "full-x6-sub3-20ep-sum-seed1": {
        "data": {"corruptions": ["substitute", "substitute", *ALL], "pairs_per_record": 6},
        "train": {"train_backbone": True, "epochs": 20, "lr": 1e-3, "pool": "sum"}, "first_seed": 1},
    "full-x6-sub3-20ep-sum-seed2": {
        "data": {"corruptions": ["substitute", "substitute", *ALL], "pairs_per_record": 6},
        "train": {"train_backbone": True, "epochs": 20, "lr": 1e-3, "pool": "sum"}, "first_seed": 2},
    # `sum` for 30 epochs (the demo's learned-reward recipe, examples/demo-learned-reward/train-reward.yaml), and
    # the same with truncations among the negatives
    **{f"full-x6-sub3{trunc}-30ep-sum{'-seed%d' % seed if seed else ''}": {
        "data": {"corruptions": ["substitute", "substitute", *ALL, *(["truncate"] if trunc else [])],
                 "pairs_per_record": 6},
        "train": {"train_backbone": True, "epochs": 30, "lr": 1e-3, "pool": "sum"}, "first_seed": seed}
       for seed in (0, 1, 2) for trunc in ("", "-trunc")},
    "full-x6-sub3-20ep-seed1": {
        "data": {"corruptions": ["substitute", "substitute", *ALL], "pairs_per_record": 6},
        "train": {"train_backbone": True, "epochs": 20, "lr": 1e-3}, "first_seed": 1},
    "full-x6-sub3-40ep": {
        "data": {"corruptions": ["substitute", "substitute", *ALL], "pairs_per_record": 6},
        "train": {"train_backbone": True, "epochs": 40, "lr": 1e-3}},
    "deeper2-x4-lr3e-3": {
        "data": {"corruptions": ALL, "pairs_per_record": 4},
        "train": {"train_backbone": True, "added_layers": 2, "epochs": 5, "lr": 3e-3}},
    "full-x4": {
        "data": {"corruptions": ALL, "pairs_per_record": 4},
        "train": {"train_backbone": True, "epochs": 5, "lr": 1e-3}},
}


def method_config(sft: str, overrides: dict[str, Any]) -> TrainRewardConfig:
    config = json.loads(json.dumps(demo_configs()["reward"]))
    config["model"]["path"] = sft
    for section in ("data", "train"):
        config[section].update(overrides.get(section, {}))
    return TrainRewardConfig.model_validate(config)


def test_pairs(seed: int = 0) -> list[tuple[str, str, str]]:
    """(prompt, chosen, rejected) for every eval word and every corruption of its reversal that exists."""
    from ppo_core.plugin.loading import load_plugins
    from ppo_core.plugin.contract import RunContext

    plugins = load_plugins(None, [])
    dataset = plugins.registry.build("dataset", TASK["dataset"], TASK["options"], RunContext(seed=seed))
    rng = random.Random(seed)
    pairs = []
    for record in dataset.records("eval"):
        for kind in CORRUPTIONS:
            rejected = corrupt(record.solution, rng, [kind], avoid=record.solutions)
            if rejected is not None:
                pairs.append((record.prompt_text, record.solution, rejected))
    return pairs


def test_accuracy(models: list, pairs: list[tuple[str, str, str]], normalize: bool = False) -> dict[str, Any]:
    """Accuracy of the mean raw (or normalised) score of ``models`` on ``pairs``, overall and per kind."""
    tokenizer = models[0].tokenizer
    chosen = [text_token_ids(tokenizer, p, c) for p, c, _r in pairs]
    rejected = [text_token_ids(tokenizer, p, r) for p, _c, r in pairs]
    rewards = torch.stack([torch.stack([m.score_ids(chosen, 256, normalize=normalize),
                                        m.score_ids(rejected, 256, normalize=normalize)], dim=1)
                           for m in models]).mean(0)
    by_kind = accuracy_by_kind(rewards, [pair_kind(c, r) for _p, c, r in pairs])
    return {"accuracy": _ranked_right(rewards[:, 0] - rewards[:, 1]), **by_kind}


def run_method(sft: str, name: str, pairs: list) -> dict[str, Any]:
    spec = METHODS[name]
    models, seconds, cpu_seconds, held_out = [], 0.0, 0.0, []
    for head in range(spec.get("heads", 1)):
        seed = spec.get("first_seed", 0) + head
        config = method_config(sft, {**spec, "train": {**spec.get("train", {}), "seed": seed}})
        started, cpu_started = time.perf_counter(), time.process_time()
        data = load_config_data(config, load_tokenizer(sft))
        result = train_reward_model(sft, data, config.train)
        seconds += time.perf_counter() - started
        cpu_seconds += time.process_time() - cpu_started
        models.append(result.model)
        held_out.append(result.metrics["held_out_accuracy"])
    return {"method": name, "test": test_accuracy(models, pairs), "train_reward_held_out": statistics.mean(held_out),
            "train_pairs": len(data), "train_s": round(seconds, 1), "train_cpu_s": round(cpu_seconds, 1),
            "threads": torch.get_num_threads()}


def saved_method(directories: list[str], pairs: list, normalize: bool = False) -> dict[str, Any]:
    models = [load_reward_model(directory) for directory in directories]
    held_out = [model.training_info["metrics"]["held_out_accuracy"] for model in models]
    return {"method": "saved:" + ",".join(directories), "normalized": normalize,
            "test": test_accuracy(models, pairs, normalize),
            "train_reward_held_out": statistics.mean(held_out),
            "train_pairs": models[0].training_info["metrics"]["train_size"]
            + models[0].training_info["metrics"]["held_out_size"], "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sft", help="the demo's SFT start (a checkpoint directory)")
    parser.add_argument("--saved", default=None, help="comma-separated reward model directories to score instead")
    parser.add_argument("--normalized", action="store_true",
                        help="with --saved: an ensemble's mean normalised score (as the reward plugin), not raw")
    parser.add_argument("--methods", default=None, help="comma-separated method names (default: all)")
    parser.add_argument("--out", default=None, help="also append each JSON line to this file")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.saved:
        emit(saved_method(args.saved.split(","), test_pairs(), args.normalized), args.out)
        return
    if not args.sft:
        sys.exit("give --sft (to train each method) or --saved (to score trained reward models)")
    names = args.methods.split(",") if args.methods else list(METHODS)
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        sys.exit(f"unknown method(s) {unknown}; known: {list(METHODS)}")
    pairs = test_pairs()
    for name in names:
        emit(run_method(args.sft, name, pairs), args.out)


def emit(line: dict[str, Any], out: Optional[str]) -> None:
    text = json.dumps(line)
    print(text, flush=True)
    if out:
        with open(out, "a", encoding="utf-8") as stream:
            stream.write(text + "\n")


if __name__ == "__main__":
    main()
