"""The fault catalogue, scaling up and issue 18's options: the same promise as tests/test_fault_catalogue.py --
exit status 2, one line naming the file, field or plugin at fault, no traceback, every earlier file unchanged --
for LoRA, gradient checkpointing, precision (and `sft`, which supports none of the three), FSDP's refusals, the
eos ids a checkpoint lists, `sft.stop_at`, a stop string and a reward model path that is a policy checkpoint. A
run that stops on such a mistake leaves its new run directory free for the corrected run (no --overwrite
needed). The slow cases SIGKILL a LoRA run while its adapter checkpoint is written and while it resumes from one,
and check that --resume ends where the uninterrupted run ends, bit for bit; and start ranks as torchrun would, for
a batch that does not divide by them and a resume on another number of ranks.
"""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from faultkit import Fault, check_fault_in_process, rewards, tiny_model  # noqa: F401 -- a fixture
from safetensors.torch import load_file

from ppo_core.runtime.metrics import read_metrics
from ppo_core.runtime.rundir import check_run_dir

LORA = {"r": 4, "alpha": 8, "target_modules": ["c_attn"]}
UNDER_TORCHRUN = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}  # check_fsdp runs before any rank joins
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def model_listing_eos(eos_token_id) -> dict:
    """``files`` for {tmp}/eos-model: the tiny model whose generation_config.json lists ``eos_token_id``."""
    generation = {"bos_token_id": 1, "eos_token_id": eos_token_id, "pad_token_id": 0}
    return {**{f"eos-model/{name}": f"@{{model}}/{name}" for name in MODEL_FILES},
            "eos-model/generation_config.json": json.dumps(generation)}


def eos_fault(case: str, eos_token_id, shown: str) -> Fault:
    return Fault(case, ("model.path", "{tmp}/eos-model/generation_config.json", f"eos_token_id {shown}",
                        "not a token id of the model's vocabulary (0 to 98)"),
                 {"model": {"path": "{tmp}/eos-model"}}, files=model_listing_eos(eos_token_id))


SCALING_FAULTS = [
    # ---- LoRA -------------------------------------------------------------------------------------------------
    Fault("lora-rank-zero", ("{config}", "model.lora.r", "greater than 0"), {"model": {"lora": {**LORA, "r": 0}}}),
    Fault("lora-alpha-negative", ("{config}", "model.lora.alpha", "greater than 0"),
          {"model": {"lora": {**LORA, "alpha": -8}}}),
    Fault("lora-dropout", ("{config}", "model.lora.dropout", "must be 0"),
          {"model": {"lora": {**LORA, "dropout": 0.1}}}),
    Fault("lora-target-modules-empty", ("{config}", "model.lora.target_modules", "names no module"),
          {"model": {"lora": {**LORA, "target_modules": []}}}),
    Fault("lora-target-modules-naming-no-module", ("model.lora.target_modules", "no_such_module", "not found"),
          {"model": {"lora": {**LORA, "target_modules": ["no_such_module"]}}}),
    Fault("lora-target-modules-a-layer-norm", ("model.lora.target_modules", "LayerNorm", "is not supported"),
          {"model": {"lora": {**LORA, "target_modules": ["ln_f"]}}}),
    Fault("lora-with-a-separate-critic", ("{config}", "model.lora", "critic: shared"),
          {"model": {"lora": LORA, "critic": "separate"}}),
    # ---- FSDP under torchrun: refused before the ranks join ------------------------------------------------------
    Fault("fsdp-with-lora", ("{config}", "train.parallel", "fsdp does not support model.lora", "ddp"),
          {"model": {"lora": LORA}, "train": {"parallel": "fsdp"}}, env=UNDER_TORCHRUN),
    Fault("fsdp-with-fp16", ("{config}", "train.parallel", "fsdp does not support train.precision fp16", "bf16"),
          {"train": {"parallel": "fsdp", "precision": "fp16", "precision_force": True}}, env=UNDER_TORCHRUN),
    Fault("fsdp-with-eval-every", ("{config}", "fsdp does not support train.eval_every"),
          {"train": {"parallel": "fsdp", "eval_every": 1}}, env=UNDER_TORCHRUN),
    # ---- precision on the CPU -----------------------------------------------------------------------------------
    Fault("precision-fp16-on-the-cpu", ("{config}", "train.precision", "fp16 autocast is for CUDA",
                                        "train.precision_force: true"), {"train": {"precision": "fp16"}}),
    Fault("precision-bf16-without-force", ("{config}", "train.precision", "bf16 autocast is for CUDA",
                                           "train.precision_force: true"), {"train": {"precision": "bf16"}}),
    Fault("precision-unknown", ("{config}", "train.precision", "'fp8'"), {"train": {"precision": "fp8"}}),
    # ---- sft trains every weight in fp32: what it would ignore is refused ----------------------------------------
    Fault("sft-with-precision", ("{config}", "train.precision", "`ppo-core sft` trains every weight in fp32"),
          {"train": {"precision": "bf16", "precision_force": True}}, command="sft"),
    Fault("sft-with-lora", ("{config}", "model.lora", "`ppo-core sft` trains every weight"),
          {"model": {"lora": LORA}}, command="sft"),
    Fault("sft-with-gradient-checkpointing", ("{config}", "model.gradient_checkpointing", "`ppo-core sft`"),
          {"model": {"gradient_checkpointing": True}}, command="sft"),
    # ---- the ids that end a response ----------------------------------------------------------------------------
    eos_fault("eos-id-outside-the-vocabulary", [2, 5000], "[2, 5000]"),
    eos_fault("eos-id-negative", -3, "-3"),
    eos_fault("eos-id-a-text", "two", "'two'"),
    Fault("environment-empty-stop-string", ("{config}", "environment.stop_strings", "must not be empty"),
          {"environment": {"name": "calculator", "stop_strings": ["</call>", ""]}}),
    # ---- sft.stop_at ----------------------------------------------------------------------------------------------
    Fault("sft-stop-at-malformed", ("{config}", "sft.stop_at", "is not `<metric> >= <number>`"),
          {"sft": {"eval_every": 1, "stop_at": "eval/exact_match > 0.5"}}, command="sft"),
    Fault("sft-stop-at-unknown-metric", ("{config}", "sft.stop_at", "'eval/accuracy >= 0.5'"),
          {"sft": {"eval_every": 1, "stop_at": "eval/accuracy >= 0.5"}}, command="sft"),
    Fault("sft-stop-at-nan", ("{config}", "sft.stop_at", "nan"),
          {"sft": {"eval_every": 1, "stop_at": "eval/exact_match >= nan"}}, command="sft"),
    Fault("sft-stop-at-without-eval-every", ("{config}", "sft.stop_at", "needs eval_every > 0"),
          {"sft": {"stop_at": "eval/loss <= 1"}}, command="sft"),
    # ---- a reward model path that is a policy checkpoint ----------------------------------------------------------
    Fault("reward-model-path-a-policy", ("reward 'reward_model' option path", "is not a reward model directory",
                                         "reward_model.json"),
          rewards({"name": "reward_model", "options": {"path": "{model}"}, "isolation": "none"})),
    Fault("hf-reward-model-path-a-policy", ("reward 'hf_reward_model' option path",
                                            "is not a trained sequence classifier", "score.weight"),
          rewards({"name": "hf_reward_model", "options": {"path": "{model}"}})),
    Fault("hf-reward-model-path-a-policy-in-eval", ("reward 'hf_reward_model'", "score.weight"),
          rewards({"name": "hf_reward_model", "options": {"path": "{model}"}, "isolation": "none"}), command="eval",
          args=("--model", "{model}")),
]


def check_and_rerun_allowed(fault: Fault, tmp: Path, model: Path, request, make_distribution, monkeypatch, capsys):
    check_fault_in_process(fault, tmp, model, request, make_distribution, monkeypatch, capsys)
    if (tmp / "run").exists():  # the run stopped before writing anything: the corrected run may start there
        assert check_run_dir(tmp / "run", resume=False, overwrite=False) == tmp / "run"


#: cases peft itself finds (which modules an adapter can wrap): without the `lora` extra the line is "LoRA needs peft"
NEEDS_PEFT = {"lora-target-modules-naming-no-module", "lora-target-modules-a-layer-norm"}
WITHOUT_PEFT = pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="needs peft (ppo-core[lora])")


@pytest.mark.parametrize("fault", [pytest.param(fault, id=fault.id, marks=[WITHOUT_PEFT] if fault.id in NEEDS_PEFT
                                                else []) for fault in SCALING_FAULTS])
def test_fault_is_one_line_naming_where(fault, tmp_path, tiny_model, request, make_distribution, monkeypatch,
                                        capsys):
    check_and_rerun_allowed(fault, tmp_path, tiny_model, request, make_distribution, monkeypatch, capsys)


# a model class transformers cannot checkpoint (as some remote-code and older architectures)
NO_CHECKPOINTING = Fault("gradient-checkpointing-unsupported", ("model.gradient_checkpointing", "GPT2LMHeadModel",
                                                                 "does not support gradient checkpointing"),
                         {"model": {"gradient_checkpointing": True}})


def test_gradient_checkpointing_on_a_model_without_it(tmp_path, tiny_model, request, make_distribution, monkeypatch,
                                                      capsys):
    from transformers.models.gpt2.modeling_gpt2 import GPT2PreTrainedModel

    monkeypatch.setattr(GPT2PreTrainedModel, "supports_gradient_checkpointing", False)
    check_and_rerun_allowed(NO_CHECKPOINTING, tmp_path, tiny_model, request, make_distribution, monkeypatch, capsys)


def scaling_catalogue_ids() -> list[str]:
    return ([fault.id for fault in SCALING_FAULTS] + [NO_CHECKPOINTING.id] + [kill[0] for kill in LORA_KILLS]
            + list(RANK_CASES))


# ---- under torchrun: a mistake every rank finds is one line per rank, exit status 2 on each ------------------
RANK_CASES = {  # case: (ranks, the arguments after the config, what each rank's line says)
    "ranks-that-do-not-divide-the-batch": (3, (), ("ppo.rollout_batch_size (8)", "must divide by the number of "
                                                   "ranks (3)")),
    "resume-on-more-ranks": (4, ("--resume", "--set", "train.updates=3"), ("--resume", "written by 2 rank(s)",
                                                                            "this run has 4", "--nproc-per-node 2")),
    "resume-in-one-process": (1, ("--resume", "--set", "train.updates=3"), ("written by 2 rank(s)", "this run has 1")),
}


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory, tiny_model):
    """A finished run of 2 updates on 2 ranks, a checkpoint after each."""
    from test_distributed import finish, start_ranks

    root = tmp_path_factory.mktemp("two-ranks")
    config = root / "run.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"path": str(tiny_model)}, "data": {"dataset": "reverse", "options": {"size": 16}},
        "rewards": [{"name": "exact_match", "isolation": "none"}],
        "ppo": {"rollout_batch_size": 8, "minibatch_size": 4, "epochs": 1}, "generation": {"max_new_tokens": 4},
        "train": {"updates": 2, "save_every": 1, "output_dir": str(root / "run"), "progress": "none"}}))
    results = finish(start_ranks(2, "-m", "ppo_core", "train", str(config)))
    assert all(code == 0 for code, _ in results), results
    return config


@pytest.mark.slow
@pytest.mark.parametrize("case", list(RANK_CASES))
def test_a_mistake_under_torchrun_is_one_line_on_every_rank(case, two_rank_run):
    from faultkit import check_error_line, snapshot
    from test_distributed import finish, start_ranks

    ranks, args, expected = RANK_CASES[case]
    run_dir = two_rank_run.parent / "run"
    before = {path: digest for path, digest in snapshot(run_dir).items() if not path.endswith(".ppo-core.lock")}
    config = two_rank_run if args else two_rank_run.with_name("fresh.yaml")
    if not args:  # a new run: the same config into a new directory
        config.write_text(two_rank_run.read_text().replace(str(run_dir), str(run_dir.with_name("fresh"))))
    command = ("-m", "ppo_core", "train", str(config), *args)
    if ranks == 1:
        done = subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=120)
        results = [(done.returncode, done.stderr)]
    else:
        results = finish(start_ranks(ranks, *command), timeout=120)
    for code, stderr in results:
        check_error_line(code, "", stderr, list(expected))
    after = {path: digest for path, digest in snapshot(run_dir).items() if not path.endswith(".ppo-core.lock")}
    assert after == before


# ---- SIGKILL of a LoRA run at the worst moments, then --resume ---------------------------------------------------
# Runs `ppo-core train` in-process with one function wrapped to SIGKILL the process at its Nth call, before or
# after the call ("after": what it wrote is on disk, what follows it is not).
KILLER = r"""
import os, signal, sys
import ppo_core.commands.train as train
import ppo_core.runtime.checkpoints as checkpoints
from ppo_core.cli import main

module, name, nth, when = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
owner = {"train": train, "checkpoints": checkpoints}[module]
original, calls = getattr(owner, name), [0]

def wrapped(*args, **kwargs):
    calls[0] += 1
    if calls[0] == nth and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    result = original(*args, **kwargs)
    if calls[0] == nth and when == "after":
        os.kill(os.getpid(), signal.SIGKILL)
    return result

setattr(owner, name, wrapped)
if __name__ == "__main__":  # a reward's worker process re-imports this script
    sys.exit(main(sys.argv[5:]))
"""

LORA_KILLS = [  # (case, killer arguments for the first run, for a first --resume or None, the newest checkpoint left)
    # the second checkpoint's adapter is in its temporary folder, its optimizer state is not
    ("lora-kill-after-the-adapter-is-written", ("train", "save_model", "2", "after"), None, 1),
    # the second checkpoint's manifest, its last file, is about to be written
    ("lora-kill-while-the-manifest-is-written", ("checkpoints", "write_json", "4", "before"), None, 1),
    # killed again while resuming from the second checkpoint: its adapters read back, nothing run yet
    ("lora-kill-during-resume", ("train", "save_model", "3", "after"), ("train", "load_adapter_weights", "1", "after"),
     2),
]


def lora_config(root: Path, model: Path, name: str) -> Path:
    config = {
        "model": {"path": str(model), "lora": LORA},
        "data": {"dataset": "reverse", "options": {"size": 32}},
        "rewards": [{"name": "edit_distance", "isolation": "none"}],
        "ppo": {"rollout_batch_size": 8, "minibatch_size": 4, "epochs": 1},
        "generation": {"max_new_tokens": 6},
        "optim": {"lr": 1e-2, "schedule": "constant"},
        "train": {"updates": 4, "save_every": 1, "output_dir": str(root / name), "progress": "none", "threads": 1},
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def ppo_core(root: Path, *args: str, killer=None) -> subprocess.CompletedProcess:
    command = [sys.executable, str(root / "killer.py"), *killer] if killer else [sys.executable, "-m", "ppo_core.cli"]
    return subprocess.run([*command, *args], capture_output=True, text=True, cwd=root, timeout=300)


def final_state(run_dir: Path) -> tuple[list, dict]:
    metrics = [{k: v for k, v in row.items() if not k.startswith(("time/", "tokens_per_s"))}
               for row in read_metrics(run_dir / "metrics.jsonl")]
    tensors = {name: load_file(run_dir / "final" / name)
               for name in ("adapter_model.safetensors", "value_head.safetensors")}
    return metrics, tensors


@pytest.fixture(scope="module")
def uninterrupted_lora_run(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("lora-kills")
    (root / "killer.py").write_text(KILLER)
    finished = ppo_core(root, "train", str(lora_config(root, tiny_model, "straight")))
    assert finished.returncode == 0, finished.stderr
    return root, final_state(root / "straight")


@pytest.mark.slow
@pytest.mark.parametrize("case, first, during_resume, newest", LORA_KILLS, ids=[kill[0] for kill in LORA_KILLS])
def test_sigkill_of_a_lora_run_then_resume_gives_the_uninterrupted_run(case, first, during_resume, newest, tiny_model,
                                                                       uninterrupted_lora_run):
    root, (metrics, tensors) = uninterrupted_lora_run
    config = str(lora_config(root, tiny_model, case))
    killed = ppo_core(root, "train", config, killer=first)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    if during_resume:
        killed = ppo_core(root, "train", config, "--resume", killer=during_resume)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
    checkpoints = root / case / "checkpoints"
    complete = sorted(path.name for path in checkpoints.iterdir() if not path.name.startswith("."))
    assert complete[-1] == f"update-{newest:06d}" and all((checkpoints / name / "manifest.json").is_file()
                                                          for name in complete), complete
    partial = [path for path in checkpoints.iterdir() if path.name.startswith(".partial-")]
    if first[1] == "save_model" and not during_resume:  # the adapter reached the temporary folder, no further
        assert [(path / "policy" / "adapter_model.safetensors").is_file() for path in partial] == [True]
        assert not (partial[0] / "optimizer.pt").exists()
    resumed = ppo_core(root, "train", config, "--resume")
    assert resumed.returncode == 0 and "damaged" not in resumed.stderr, resumed.stderr
    resumed_metrics, resumed_tensors = final_state(root / case)
    assert [row["update"] for row in resumed_metrics] == [1, 2, 3, 4] and resumed_metrics == metrics
    for name, saved in tensors.items():
        assert saved.keys() == resumed_tensors[name].keys()
        assert all(saved[key].equal(resumed_tensors[name][key]) for key in saved), name
    assert [path.name for path in checkpoints.iterdir() if path.name.startswith(".")] == []


def test_the_scaling_catalogue_counts_its_cases():
    ids = scaling_catalogue_ids()
    assert len(ids) == len(set(ids)), "two cases share an id"
    assert len(ids) >= 30, len(ids)
