"""Kill `ppo-core train` with SIGKILL at random moments, resume it, and count how many resumed runs end with
bitwise the same final weights and metrics.jsonl as a run that was never interrupted.

    python benchmarks/kill_resume.py [--kills 20] [--seed 0] [--workdir .bench/kill-resume]

Prints one JSON line: {"kills": 20, "matched": N, "mismatched": [...], ...}.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from ppo_core.modeling.tiny import init_model
from ppo_core.runtime.metrics import read_metrics

TIMING = ("time/", "tokens_per_s")


def config_for(workdir: Path, model: Path, name: str) -> Path:
    config = {
        "model": {"path": str(model)},
        "data": {"dataset": "reverse", "options": {"size": 128}},
        "rewards": [{"name": "edit_distance"}, {"name": "exact_match"}, {"name": "repetition_penalty", "weight": 0.2}],
        "ppo": {"rollout_batch_size": 16, "minibatch_size": 8, "epochs": 2},
        "generation": {"max_new_tokens": 12},
        "optim": {"lr": 1e-3},
        "train": {"updates": 6, "save_every": 1, "keep_checkpoints": 2, "output_dir": str(workdir / name),
                  "progress": "none"},
    }
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def train(config: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ppo_core.cli", "train", str(config), *extra],
                          capture_output=True, text=True)


def outcome(run_dir: Path):
    metrics = [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in read_metrics(run_dir / "metrics.jsonl")]
    return metrics, load_file(run_dir / "final" / "model.safetensors")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=".bench/kill-resume")
    args = parser.parse_args()

    workdir = Path(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    model = init_model(workdir / "tiny", "tiny", seed=0)

    started = time.perf_counter()
    reference = config_for(workdir, model, "reference")
    result = train(reference)
    if result.returncode:
        sys.exit(f"the uninterrupted run failed:\n{result.stderr}")
    duration = time.perf_counter() - started
    expected_metrics, expected_weights = outcome(workdir / "reference")

    rng = random.Random(args.seed)
    matched, mismatched, resumes = 0, [], 0
    for kill in range(args.kills):
        name = f"kill-{kill:02d}"
        config = config_for(workdir, model, name)
        delay = rng.uniform(0.5, duration)
        process = subprocess.Popen([sys.executable, "-m", "ppo_core.cli", "train", str(config)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            process.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
        result = train(config, "--resume")
        resumes += 1
        if result.returncode:
            mismatched.append({"kill": kill, "delay_s": round(delay, 2), "error": result.stderr.strip()[-300:]})
            continue
        metrics, weights = outcome(workdir / name)
        same = metrics == expected_metrics and weights.keys() == expected_weights.keys() and all(
            torch.equal(weights[k], expected_weights[k]) for k in weights)
        if same:
            matched += 1
        else:
            mismatched.append({"kill": kill, "delay_s": round(delay, 2), "error": "final weights or metrics differ"})
        shutil.rmtree(workdir / name)
    print(json.dumps({"kills": args.kills, "matched": matched, "mismatched": mismatched,
                      "uninterrupted_run_s": round(duration, 2), "seed": args.seed}))


if __name__ == "__main__":
    main()
