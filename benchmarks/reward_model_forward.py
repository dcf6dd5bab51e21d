"""What zero extra forward saves: PPO updates with the learned reward read from the reference forward
(`zero_extra_forward: auto`) against the same reward running its own backbone forward (`off`), interleaved.

    python benchmarks/reward_model_forward.py [--size small] [--updates 4] [--pairs 3]

Prints one JSON line: per mode the median seconds per update and in the reward (`time/score_s`), and per pair
the ratio auto/off of both. The scores themselves agree within 1e-5 (tests/test_reward_model.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

RUN = r"""
import json, sys, torch
from ppo_core.config import load_config
from ppo_core.commands.train import train
from ppo_core.runtime.metrics import read_metrics
config = load_config(sys.argv[1], ["rewards.0.options.zero_extra_forward=" + sys.argv[2]])
train(config, overwrite=True)
rows = read_metrics(config.train.output_dir + "/metrics.jsonl")[1:]  # the first update warms up
print(json.dumps({"update_s": [r["time/update_s"] for r in rows], "score_s": [r["time/score_s"] for r in rows]}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small")
    parser.add_argument("--updates", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()

    import yaml

    from ppo_core.commands.train_reward import run_train_reward
    from ppo_core.config.train_reward import TrainRewardConfig
    from ppo_core.modeling.tiny import init_model

    work = Path(tempfile.mkdtemp(prefix="rm-forward-"))
    model = init_model(work / "model", args.size, seed=0)
    run_train_reward(TrainRewardConfig.model_validate({
        "model": {"path": str(model)}, "data": {"dataset": "reverse", "options": {"size": 128, "eval_size": 0}},
        "train": {"epochs": 1}, "normalization": {"prompts": 8, "max_new_tokens": 8},
        "output_dir": str(work / "rm")}))
    config = {
        "model": {"path": str(model)},
        "data": {"dataset": "reverse"},
        "rewards": [{"name": "reward_model", "options": {"path": str(work / "rm")}}],
        "ppo": {"rollout_batch_size": 64, "minibatch_size": 16, "epochs": 4},
        "generation": {"max_new_tokens": 32},
        "train": {"updates": args.updates, "output_dir": str(work / "run"), "progress": "none", "threads": 2},
    }
    (work / "config.yaml").write_text(yaml.safe_dump(config))

    results: dict[str, list[dict]] = {"auto": [], "off": []}
    for _ in range(args.pairs):
        for mode in ("auto", "off"):
            out = subprocess.run([sys.executable, "-c", RUN, str(work / "config.yaml"), mode], capture_output=True,
                                 text=True, check=True).stdout.strip().splitlines()[-1]
            results[mode].append(json.loads(out))

    def median(mode, key):
        return statistics.median(v for run in results[mode] for v in run[key])

    pairs = [{"update_ratio": statistics.median(a["update_s"]) / statistics.median(o["update_s"]),
              "score_ratio": statistics.median(a["score_s"]) / statistics.median(o["score_s"])}
             for a, o in zip(results["auto"], results["off"])]
    print(json.dumps({
        "size": args.size, "updates": args.updates, "pairs": args.pairs,
        "auto": {"sec_per_update_median": median("auto", "update_s"), "score_s_median": median("auto", "score_s")},
        "off": {"sec_per_update_median": median("off", "update_s"), "score_s_median": median("off", "score_s")},
        "pairs_auto_over_off": pairs,
        "update_ratio_median": statistics.median(p["update_ratio"] for p in pairs),
    }))


if __name__ == "__main__":
    main()
