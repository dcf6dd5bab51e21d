"""Crash safety: SIGKILL at chosen points and resume gives the uninterrupted run's weights and metrics;
SIGTERM stops at a safe point with a checkpoint; non-finite steps are skipped and then stop the run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ppo_core.modeling.tiny import init_model
from ppo_core.runtime.metrics import read_metrics

TIMING = ("time/", "tokens_per_s")

# Runs `ppo-core train` in-process, with one function wrapped to SIGKILL the process on its Nth call.
KILLER = r"""
import os, signal, sys
import ppo_core.runtime.checkpoints as checkpoint
import ppo_core.runtime.metrics as metrics
import ppo_core.ppo.engine as engine
from ppo_core.cli import main

target, nth = sys.argv[1], int(sys.argv[2])
calls = [0]

def killing(original):
    def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)
    return wrapped

if target == "generate":
    engine.generate_responses = killing(engine.generate_responses)
elif target == "train":
    engine.PPOEngine._loss = killing(engine.PPOEngine._loss)
elif target == "checkpoint":
    checkpoint.save_torch_state = killing(checkpoint.save_torch_state)
elif target == "metrics":
    metrics.MetricsLog.write = killing(metrics.MetricsLog.write)
if __name__ == "__main__":  # a reward's worker process re-imports this script
    sys.exit(main(sys.argv[3:]))
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability")
    model = init_model(root / "tiny", "tiny", seed=0)
    (root / "killer.py").write_text(KILLER)
    return root, model


def write_config(root: Path, model: Path, name: str, **train) -> Path:
    config = {
        "model": {"path": str(model)},
        "data": {"dataset": "reverse", "options": {"size": 64}},
        "rewards": [{"name": "edit_distance"}, {"name": "repetition_penalty", "weight": 0.5}],
        "ppo": {"rollout_batch_size": 8, "minibatch_size": 4, "epochs": 2},
        "generation": {"max_new_tokens": 8},
        "optim": {"lr": 1e-3},
        "train": {"updates": 4, "save_every": 1, "output_dir": str(root / name), "progress": "lines", **train},
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def ppo_core(*args, cwd=None, script=None):
    command = [sys.executable, str(script), *args] if script else [sys.executable, "-m", "ppo_core.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=300)


def without_timing(path: Path):
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in read_metrics(path)]


def weights(run_dir: Path):
    return load_file(run_dir / "final" / "model.safetensors")


@pytest.fixture(scope="module")
def reference_run(setup):
    root, model = setup
    config = write_config(root, model, "straight")
    result = ppo_core("train", str(config))
    assert result.returncode == 0, result.stderr
    return root / "straight"


@pytest.mark.parametrize("target,nth", [("generate", 3), ("train", 7), ("checkpoint", 2), ("metrics", 3)])
def test_sigkill_then_resume_matches_the_uninterrupted_run(setup, reference_run, target, nth):
    root, model = setup
    name = f"killed-{target}"
    config = write_config(root, model, name)
    killed = ppo_core(target, str(nth), "train", str(config), script=root / "killer.py")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (root / name / "final").exists()
    resumed = ppo_core("train", str(config), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert without_timing(root / name / "metrics.jsonl") == without_timing(reference_run / "metrics.jsonl")
    a, b = weights(reference_run), weights(root / name)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    leftovers = [p.name for p in (root / name / "checkpoints").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_sigterm_stops_at_a_safe_point_and_says_how_to_resume(setup, reference_run):
    root, model = setup
    config = write_config(root, model, "terminated", save_every=0)
    process = subprocess.Popen([sys.executable, "-m", "ppo_core.cli", "train", str(config)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = root / "terminated" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 1):
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "SIGTERM" in stderr and "--resume" in stderr and "Traceback" not in stderr
    stopped_at = json.loads(metrics.read_text().splitlines()[-1])["update"]
    if stopped_at < 4:
        assert (root / "terminated" / "checkpoints" / f"update-{stopped_at:06d}" / "state.json").is_file()
    resumed = ppo_core("train", str(config), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert without_timing(metrics) == without_timing(reference_run / "metrics.jsonl")


def test_existing_run_directory_is_never_overwritten_without_asking(setup, reference_run):
    root, model = setup
    config = write_config(root, model, "straight")
    before = (reference_run / "metrics.jsonl").read_bytes()
    result = ppo_core("train", str(config))
    assert result.returncode == 2
    assert "--resume" in result.stderr and "--overwrite" in result.stderr and "Traceback" not in result.stderr
    assert (reference_run / "metrics.jsonl").read_bytes() == before


def test_non_finite_steps_are_skipped_then_the_run_stops(setup):
    root, model = setup
    plugin = root / "huge_plugin.py"
    plugin.write_text(
        "from ppo_core import hookimpl\nfrom ppo_core import Reward\n"
        "class Huge(Reward):\n    name = 'huge'\n"
        "    def __call__(self, samples):\n        return [3e38 * (i % 2) for i, _ in enumerate(samples)]\n"
        "@hookimpl\ndef register_rewards(register):\n    register(Huge)\n")
    script = root / "run_huge.py"
    script.write_text(
        "import sys\nsys.path.insert(0, sys.argv[1])\nimport huge_plugin\n"
        "from ppo_core.config import load_config\nfrom ppo_core.commands.train import train\n"
        "from ppo_core.errors import TrainingError\n"
        "config = load_config(sys.argv[2], ['rewards=[{name: huge}]', 'train.save_every=0'])\n"
        "if __name__ == '__main__':  # a reward's worker process re-imports this script\n"
        "    try:\n        train(config, extra_plugins=[('huge_plugin', huge_plugin)])\n"
        "    except TrainingError as error:\n        print('STOPPED:', error)\n")
    config = write_config(root, model, "nonfinite")
    result = subprocess.run([sys.executable, str(script), str(root), str(config)], capture_output=True,
                            text=True, timeout=300)
    assert "STOPPED: 3 optimizer steps in a row had a non-finite loss" in result.stdout, result.stderr
    assert not (root / "nonfinite" / "final").exists()
