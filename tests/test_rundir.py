"""Run directories are owned and locked, --overwrite never loses the old run, checkpoints verify themselves."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ppo_core.cli import main
from ppo_core.errors import UserError
from ppo_core.modeling.tiny import init_model
from ppo_core.runtime import checkpoints
from ppo_core.runtime.rundir import (
    LOCK_FILE,
    MARKER_FILE,
    RunDirError,
    check_run_dir,
)

HOLD_LOCK = "import sys, time\nfrom ppo_core.runtime.rundir import claim_run_dir\n" \
            "held = claim_run_dir(sys.argv[1], resume=True, overwrite=False)\nprint('held', flush=True)\ntime.sleep(600)\n"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return init_model(tmp_path_factory.mktemp("rundir") / "tiny", "tiny", seed=0)


def write_config(root: Path, model: Path, name: str = "run", **train) -> Path:
    config = {
        "model": {"path": str(model)},
        "data": {"dataset": "reverse", "options": {"size": 32}},
        "rewards": [{"name": "edit_distance"}],
        "ppo": {"rollout_batch_size": 4, "minibatch_size": 4, "epochs": 1},
        "generation": {"max_new_tokens": 4},
        "train": {"updates": 2, "save_every": 1, "output_dir": str(root / name), "progress": "lines", **train},
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != LOCK_FILE}


def one_error_line(capsys, *expected: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for text in expected:
        assert text in err, err
    return err


@pytest.mark.parametrize("where", ["cwd", "parent", "home"])
def test_overwrite_never_replaces_the_current_directory_its_ancestors_or_home(tmp_path, monkeypatch, where):
    inside = tmp_path / "work"
    inside.mkdir()
    (inside / "config.yaml").write_text("a run? no: the user's folder\n")
    monkeypatch.chdir(inside)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "config.yaml").write_text("x\n")
    target = {"cwd": Path("."), "parent": Path(".."), "home": tmp_path / "home"}[where]
    with pytest.raises(RunDirError, match="refusing to --overwrite"):
        check_run_dir(target, resume=False, overwrite=True)


def test_overwrite_refuses_a_folder_of_the_users_own_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine\n")
    with pytest.raises(RunDirError, match=r"not ppo-core's \(notes.txt\)"):
        check_run_dir(tmp_path, resume=False, overwrite=True)
    (tmp_path / "notes.txt").unlink()
    (tmp_path / "data.csv").write_text("1,2\n")
    (tmp_path / "config.yaml").write_text("x\n")
    with pytest.raises(RunDirError, match="data.csv"):
        check_run_dir(tmp_path, resume=False, overwrite=True)


def test_resume_and_overwrite_together_are_refused(tmp_path):
    with pytest.raises(RunDirError, match="pass one of them"):
        check_run_dir(tmp_path, resume=True, overwrite=True)


def test_a_live_run_is_locked_and_the_lock_dies_with_its_holder(model, tmp_path, capsys):
    config = write_config(tmp_path, model)
    (tmp_path / "run").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path / "run")], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for args in (["--resume"], ["--overwrite"], []):
            (tmp_path / "run" / "config.yaml").write_text("x\n")  # so that a plain start also meets a run
            assert main(["train", str(config), *args]) == 2
            one_error_line(capsys, "train.output_dir", "in use by another ppo-core process", f"PID {holder.pid}")
        holder.send_signal(signal.SIGKILL)  # the kernel drops the lock with the process
        holder.wait(timeout=30)
    finally:
        holder.kill()
    (tmp_path / "run" / "config.yaml").unlink()
    assert main(["train", str(config), "--resume"]) == 0
    assert (tmp_path / "run" / "final" / "config.json").is_file()


def test_overwrite_that_fails_before_its_first_checkpoint_keeps_the_old_run(model, tmp_path, capsys):
    config = write_config(tmp_path, model)
    assert main(["train", str(config)]) == 0
    capsys.readouterr()
    before = hashes(tmp_path / "run")
    # the new run dies in update 1 (non-finite learning rate makes every step non-finite)
    assert main(["train", str(config), "--overwrite", "--set", "optim.max_grad_norm=null",
                 "--set", "ppo.vf_coef=1e300", "--set", "train.max_nonfinite_steps=1"]) == 2
    capsys.readouterr()
    assert hashes(tmp_path / "run") == before
    assert not list(tmp_path.glob(".run.staging-*"))


def test_overwrite_killed_before_its_first_checkpoint_keeps_the_old_run(model, tmp_path, capsys):
    config = write_config(tmp_path, model, updates=200, save_every=0)
    assert main(["train", str(config), "--set", "train.updates=1"]) == 0
    capsys.readouterr()
    before = hashes(tmp_path / "run")
    process = subprocess.Popen([sys.executable, "-m", "ppo_core.cli", "train", str(config), "--overwrite"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.name == "metrics.jsonl" and p.stat().st_size
                                             for p in tmp_path.glob(".run.staging-*/metrics.jsonl")):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert hashes(tmp_path / "run") == before
    # the next start clears the dead run's staging folder, then replaces the old run once it has saved
    assert main(["train", str(config), "--overwrite", "--set", "train.updates=2", "--set", "train.save_every=1"]) == 0
    assert not list(tmp_path.glob(".run.staging-*"))
    assert (tmp_path / "run" / MARKER_FILE).is_file()
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["update-000001", "update-000002"]


def test_resume_falls_back_to_the_newest_intact_checkpoint(model, tmp_path, capsys):
    config = write_config(tmp_path, model, updates=3, keep_checkpoints=3)
    assert main(["train", str(config)]) == 0
    straight = (tmp_path / "run" / "final" / "model.safetensors").read_bytes()
    capsys.readouterr()
    # a run killed after update 3's checkpoint whose newest checkpoint was then damaged on disk
    (tmp_path / "run" / "final").rename(tmp_path / "final-straight")
    newest = tmp_path / "run" / "checkpoints" / "update-000003"
    weights = newest / "policy" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert main(["train", str(config), "--resume"]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "update-000003" in warnings[0] and "policy/model.safetensors" in warnings[0]
    assert "resuming from update-000002" in warnings[0]
    assert (tmp_path / "run" / "final" / "model.safetensors").read_bytes() == straight


def test_every_checkpoint_file_is_in_its_manifest(model, tmp_path):
    config = write_config(tmp_path, model, updates=1)
    assert main(["train", str(config)]) == 0
    checkpoint = tmp_path / "run" / "checkpoints" / "update-000001"
    manifest = checkpoints.read_json(checkpoint / checkpoints.MANIFEST_FILE)["files"]
    on_disk = {str(p.relative_to(checkpoint)) for p in checkpoint.rglob("*") if p.is_file()}
    assert set(manifest) == on_disk - {checkpoints.MANIFEST_FILE}
    assert checkpoints.verify_checkpoint(checkpoint) is None
    (checkpoint / "state.json").write_text("{}")
    assert "state.json" in checkpoints.verify_checkpoint(checkpoint)


def test_a_full_disk_leaves_no_partial_folder_and_names_the_target(tmp_path):
    def write(tmp: Path) -> None:
        (tmp / "weights").write_bytes(b"x" * 10)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(UserError, match=r"cannot write .*update-000001: the disk is full"):
        checkpoints.save_checkpoint(tmp_path, 1, 2, write)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == []


def test_a_file_size_limit_mid_checkpoint_is_one_named_line(model, tmp_path):
    """A real write failure in a real run (RLIMIT_FSIZE stands in for a full disk): exit 2, no partial folder."""
    config = write_config(tmp_path, model, updates=1)
    limited = ("import resource, signal, sys\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
               "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))\n"
               "from ppo_core.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    result = subprocess.run([sys.executable, "-c", limited, "train", str(config)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr and "cannot write" in last and "update-000001" in last
    assert not [p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith(".partial")]


def test_output_dir_that_is_a_file_fails_before_any_compute(model, tmp_path, capsys):
    (tmp_path / "run").write_text("a file\n")
    config = write_config(tmp_path, model)
    assert main(["train", str(config)]) == 2
    one_error_line(capsys, "train.output_dir", "is a file")
    assert (tmp_path / "run").read_text() == "a file\n"


def test_train_reward_overwrite_refuses_the_current_directory_and_user_files(tmp_path, monkeypatch, capsys):
    config = tmp_path / "reward.yaml"
    config.write_text(yaml.safe_dump({"model": {"path": str(tmp_path / "nowhere")},
                                      "data": {"path": str(tmp_path / "pairs.jsonl")}, "output_dir": "."}))
    (tmp_path / "notes.txt").write_text("mine\n")
    monkeypatch.chdir(tmp_path)
    assert main(["train-reward", str(config), "--overwrite"]) == 2
    one_error_line(capsys, "output_dir", "refusing to --overwrite", "current directory")
    assert main(["train-reward", str(config), "--overwrite", "--set", f"output_dir={tmp_path}/.."]) == 2
    one_error_line(capsys, "refusing to --overwrite")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("x\n")
    assert main(["train-reward", str(config), "--overwrite", "--set", "output_dir=out"]) == 2
    one_error_line(capsys, "not ppo-core's (mine.txt)")
    assert (tmp_path / "notes.txt").read_text() == "mine\n" and (tmp_path / "out" / "mine.txt").is_file()


def test_demo_overwrite_refuses_a_folder_with_other_files(tmp_path, capsys):
    (tmp_path / "thesis.tex").write_text("mine\n")
    assert main(["demo", "--out", str(tmp_path), "--overwrite"]) == 2
    one_error_line(capsys, "demo: --out", "thesis.tex")
    assert (tmp_path / "thesis.tex").read_text() == "mine\n"
