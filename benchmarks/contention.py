"""How the demo's SFT and PPO stages slow down when another torch job shares the CPU.

    python benchmarks/contention.py [--rounds 3] [--sft-steps 100] [--ppo-updates 6]

Each measurement is one subprocess running a stage of the demo (`ppo-core demo`'s own configs from
``ppo_core.commands.demo.demo_configs``: SFT for ``--sft-steps`` steps, PPO for ``--ppo-updates`` updates with the
rule rewards), timed from the first step to the last (model loading and start-up excluded), in each setting:

- ``before``: ``train.threads: 2`` (what the demo's configs said before) and OpenMP's default wait policy
  (``GOMP_SPINCOUNT=300000``, libgomp's spin count when ``OMP_WAIT_POLICY`` is unset), as before ppo-core chose one;
- ``default``: the demo's configs as they are (no thread count) and the wait policy ppo-core sets when the user
  has not chosen one (``OMP_WAIT_POLICY=PASSIVE``, see ``ppo_core/runtime/cpu.py``);

each quiet and with a competing job: another process doing 2-thread float32 matmuls (512 x 512) for as long as
the stage runs. Rounds interleave every (setting, load) pair, the order alternating between rounds.

Prints one JSON line: per stage and setting the median seconds quiet and loaded, and loaded / quiet.
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

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".bench" / "contention"

COMPETITOR = r"""
import torch
torch.set_num_threads(2)
a = torch.randn(512, 512)
while True:
    a = (a @ a).tanh()
"""

STAGE = r"""
import json, sys, time
settings = json.loads(sys.argv[1])
from ppo_core.commands.demo import demo_configs
from ppo_core.config import load_config
from ppo_core.runtime.metrics import read_metrics
stage, out, model = settings["stage"], settings["out"], settings["model"]
config = demo_configs(out)[stage]
config["model"]["path"] = model
if stage == "ppo":
    config["rewards"] = config["rewards"][1:]  # the rule rewards (no reward model to train first)
    config["model"]["critic"] = "shared"
if not settings["default"]:
    config["train"]["threads"] = 2
overrides = settings["overrides"]
config = load_config(None, overrides, base=config)
if stage == "sft":
    from ppo_core.commands.sft import train_sft as run
else:
    from ppo_core.commands.train import train as run
run(config, overwrite=True, **({"source": "benchmark"} if stage == "sft" else {}))
rows = read_metrics(config.train.output_dir + "/metrics.jsonl")
print(json.dumps({"rows": rows}))
"""


def stage_seconds(stage: str, rows: list[dict]) -> float:
    """The stage's compute time from its metrics: PPO's update times, SFT's step times."""
    if stage == "ppo":
        return sum(row["time/update_s"] for row in rows)
    seconds, previous = 0.0, 0
    for row in rows:  # each line averages the steps since the previous line
        seconds += row["time/step_s"] * (row["step"] - previous)
        previous = row["step"]
    return seconds


def run_stage(stage: str, setting: str, loaded: bool, model: Path, out: Path, args) -> float:
    from ppo_core.commands.demo import FIXED_STEP_SFT

    overrides = {"sft": [*FIXED_STEP_SFT, f"sft.steps={args.sft_steps}", f"sft.log_every={args.sft_steps}"],
                 "ppo": [f"train.updates={args.ppo_updates}", "train.progress=none"]}[stage]
    settings = {"stage": stage, "default": setting == "default", "model": str(model), "out": str(out),
                "overrides": overrides}
    env = {key: value for key, value in os.environ.items() if not key.startswith(("OMP_", "GOMP_", "MKL_"))}
    if setting == "before":
        env["GOMP_SPINCOUNT"] = "300000"
    competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR], env=env) if loaded else None
    try:
        if competitor is not None:
            time.sleep(1.0)  # let it reach its loop
        done = subprocess.run([sys.executable, "-c", STAGE, json.dumps(settings)], capture_output=True, text=True,
                              env=env, cwd=REPO)
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    if done.returncode != 0:
        raise SystemExit(f"{stage} ({setting}, loaded={loaded}) failed:\n{done.stderr[-3000:]}")
    return stage_seconds(stage, json.loads(done.stdout.strip().splitlines()[-1])["rows"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sft-steps", type=int, default=100)
    parser.add_argument("--ppo-updates", type=int, default=6)
    parser.add_argument("--stages", default="sft,ppo")
    args = parser.parse_args()

    model = CACHE / "model"
    if not (model / "config.json").exists():
        from ppo_core.modeling.tiny import init_model

        init_model(model, "tiny", seed=0)
    cases = [(setting, loaded) for setting in ("before", "default") for loaded in (False, True)]
    seconds: dict[str, dict[tuple[str, bool], list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for stage in args.stages.split(","):
                for setting, loaded in (cases if round_ % 2 == 0 else cases[::-1]):
                    value = run_stage(stage, setting, loaded, model, Path(tmp) / f"{stage}-{setting}", args)
                    seconds.setdefault(stage, {}).setdefault((setting, loaded), []).append(value)
                    print(f"round {round_ + 1}/{args.rounds} {stage} {setting} "
                          f"{'loaded' if loaded else 'quiet'}: {value:.2f} s", file=sys.stderr, flush=True)
    summary = {}
    for stage, by_case in seconds.items():
        for setting in ("before", "default"):
            quiet = statistics.median(by_case[(setting, False)])
            loaded = statistics.median(by_case[(setting, True)])
            summary[f"{stage}/{setting}"] = {"quiet_s": round(quiet, 3), "loaded_s": round(loaded, 3),
                                             "loaded_over_quiet": round(loaded / quiet, 2)}
    print(json.dumps({"rounds": args.rounds, "sft_steps": args.sft_steps, "ppo_updates": args.ppo_updates,
                      "cpus": os.cpu_count(), **summary}))


if __name__ == "__main__":
    main()
