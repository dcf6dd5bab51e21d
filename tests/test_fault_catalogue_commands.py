"""The fault catalogue, part 2: the same promise as tests/test_fault_catalogue.py -- exit status 2, one line
naming the file, field or plugin at fault, no traceback, bounded time, every earlier file unchanged -- for every
command's config and data (sft, eval, train-reward, init-model, config check), rewards and datasets misbehaving
with ``isolation: none`` as well as in worker processes, damaged checkpoints, outputs that cannot be written,
run directories held by another process, and SIGKILLs during ``--overwrite`` and of a process waiting for a lock.
The machinery is in tests/faultkit.py. :func:`test_the_catalogue_counts_at_least_150_cases` counts all of it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from faultkit import (  # noqa: F401 -- tiny_model, previous_run and lock_holder are fixtures
    BASE,
    CASE_SECONDS,
    DELETE,
    GOOD_LINE,
    REMOVED,
    TRUNCATED,
    Fault,
    as_a_cli_process,
    check_fault_in_process,
    isolated,
    jsonl,
    lock_holder,
    merge,
    on_jsonl,
    previous_run,
    rewards,
    substitute,
    time_limit,
    tiny_model,
    write_case_file,
)
from test_fault_catalogue import FAULTS, ISOLATION_FAULTS

from ppo_core.cli import main
from ppo_core.runtime import checkpoints
from ppo_core.runtime.rundir import LOCK_FILE, MARKER_FILE

NAN, INF = float("nan"), float("inf")
LONG_NAME = "x" * 300  # longer than any file system's name limit (255 bytes)


def reward_model_config(**change: Any) -> str:
    """A `train-reward` config (YAML text): the tiny model on {tmp}/pairs.jsonl into {tmp}/rm, with ``change``."""
    base = {"model": {"path": "{model}"}, "data": {"path": "{tmp}/pairs.jsonl"}, "output_dir": "{tmp}/rm",
            "train": {"epochs": 1}, "threads": 1}
    return yaml.safe_dump(merge(base, change), sort_keys=False)


def eval_args(*more: str) -> tuple[str, ...]:
    return ("--model", "{model}", *more)


def in_every_checkpoint(name: str, damage: Any) -> dict:
    """``files`` that damage ``name`` in both checkpoints of the previous run (updates 1 and 2)."""
    return {f"run/checkpoints/update-{update:06d}/{name}": damage for update in (1, 2)}


PAIR = {"prompt": "p", "chosen": "a", "rejected": "b"}
RESUME = ("--resume", "--set", "train.updates=3")

COMMAND_FAULTS = [
    # ---- config values in the other commands' sections and commands -------------------------------------------
    Fault("sft-steps-bool", ("{config}", "sft.steps", "not a boolean"), {"sft": {"steps": True}}, command="sft"),
    Fault("sft-lr-nan", ("{config}", "sft.lr", "finite number"), {"sft": {"lr": NAN}}, command="sft"),
    Fault("sft-epochs-inf", ("{config}", "sft.epochs", "finite number"), {"sft": {"steps": DELETE, "epochs": INF}},
          command="sft"),
    Fault("sft-batch-size-huge", ("{config}", "sft.batch_size", "less than or equal to 65536"),
          {"sft": {"batch_size": 10**9}}, command="sft"),
    Fault("sft-eval-every-negative", ("{config}", "sft.eval_every", "greater than or equal to 0"),
          {"sft": {"eval_every": -1}}, command="sft"),
    Fault("sft-stop-at-an-eval-split-without-records", ("{config}", "sft.stop_at", "which has no records"),
          {"data": {"options": {"eval_size": 0}}, "sft": {"eval_every": 1, "stop_at": "eval/exact_match >= 0.9"}},
          command="sft"),
    Fault("sft-stop-at-a-reward-not-configured", ("{config}", "sft.stop_at", "'edit_distance'", "not in `rewards`"),
          {"sft": {"eval_every": 1, "stop_at": "eval/reward/edit_distance >= 0.5"}}, command="sft"),
    Fault("sft-resume-with-overwrite", ("--resume", "--overwrite", "one of them"), command="sft",
          args=("--resume", "--overwrite"), run_dir="previous"),
    Fault("sft-into-an-existing-run", ("train.output_dir", "{tmp}/run", "--resume", "--overwrite"), command="sft",
          run_dir="previous"),
    Fault("eval-temperature-nan", ("{config}", "generation.temperature", "finite number"),
          {"generation": {"temperature": NAN}}, command="eval", args=eval_args()),
    Fault("eval-unknown-key", ("{config}", "generation.beams", "Extra inputs"), {"generation": {"beams": 4}},
          command="eval", args=eval_args()),
    Fault("eval-seed-beyond-64-bits", ("--seed", str(2**70)), command="eval", args=eval_args("--seed", str(2**70))),
    Fault("eval-samples-negative", ("--samples", "-3"), command="eval", args=eval_args("--samples", "-3")),
    Fault("config-check-reward-weight-nan", ("{config}", "rewards.0.weight", "finite number"),
          rewards({"name": "exact_match", "weight": NAN}), command="config check"),
    Fault("config-check-unknown-section", ("{config}", "trainer", "Extra inputs"), {"trainer": {"updates": 3}},
          command="config check"),
    Fault("config-check-set-bool-for-int", ("--set ppo.epochs=true", "ppo.epochs", "not a boolean"),
          command="config check", args=("--set", "ppo.epochs=true")),
    Fault("train-reward-epochs-bool", ("{config}", "train.epochs", "not a boolean"), command="train-reward",
          text=reward_model_config(train={"epochs": True})),
    Fault("train-reward-lr-nan", ("{config}", "train.lr", "finite number"), command="train-reward",
          text=reward_model_config(train={"lr": NAN})),
    Fault("train-reward-held-out-everything", ("{config}", "train.held_out_fraction", "less than 1"),
          command="train-reward", text=reward_model_config(train={"held_out_fraction": 1.0})),
    Fault("train-reward-seed-beyond-64-bits", ("{config}", "train.seed", "less than or equal to"),
          command="train-reward", text=reward_model_config(train={"seed": 2**70})),
    Fault("train-reward-threads-zero", ("{config}", "threads", "greater than 0"), command="train-reward",
          text=reward_model_config(threads=0)),
    Fault("train-reward-normalization-one-prompt", ("{config}", "normalization.prompts", "greater than 1"),
          command="train-reward", text=reward_model_config(normalization={"prompts": 1})),
    Fault("train-reward-path-and-dataset", ("{config}", "data", "exactly one of `path`"), command="train-reward",
          text=reward_model_config(data={"dataset": "reverse"})),
    Fault("train-reward-format-with-dataset", ("{config}", "data", "`format` applies to `path`"),
          command="train-reward", text=reward_model_config(data={"path": None, "dataset": "reverse",
                                                                  "format": "pairs"})),
    Fault("train-reward-duplicate-key", ("{config}, line 4", "'epochs' appears twice", "first on line 3"), command="train-reward",
          text="model: {path: '{model}'}\ntrain:\n  epochs: 1\n  epochs: 2\ndata: {path: x.jsonl}\n"),
    Fault("train-reward-unknown-dataset", ("{config}", "data.dataset", "unknown dataset 'revrese'"),
          command="train-reward", text=reward_model_config(data={"path": None, "dataset": "revrese"})),
    Fault("init-model-no-positions", ("init-model", "n_positions", "got 0"),
          argv=("init-model", "{tmp}/new", "--size", "tiny", "--n-positions", "0")),
    Fault("init-model-seed-beyond-64-bits", ("init-model", "--seed", str(2**70)),
          argv=("init-model", "{tmp}/new", "--size", "tiny", "--seed", str(2**70))),
    # ---- data files, per command ------------------------------------------------------------------------------
    Fault("jsonl-path-is-a-directory", ("{tmp}/data.jsonl", "not a file", "dataset 'jsonl'"), on_jsonl(),
          files={"data.jsonl/": ""}),
    Fault("jsonl-binary-file", ("{tmp}/data.jsonl", "line 1", "not valid JSON"), on_jsonl(),
          files={"data.jsonl": bytes(range(256))}),
    Fault("jsonl-prompt-not-a-string", ("{tmp}/data.jsonl, line 2", "prompt"), on_jsonl(),
          files={"data.jsonl": jsonl(GOOD_LINE, {"prompt": 42, "solution": "x"})}),
    Fault("jsonl-line-not-an-object", ("{tmp}/data.jsonl, line 1", "JSON object", "got array"), on_jsonl(),
          files={"data.jsonl": jsonl(["reverse: abc =", "cba"])}),
    Fault("jsonl-gzip-corrupt", ("{tmp}/data.jsonl.gz",), on_jsonl("{tmp}/data.jsonl.gz"),
          files={"data.jsonl.gz": b"\x1f\x8b\x08\x00garbage, not a gzip stream"}),
    Fault("jsonl-eval-path-missing", ("{tmp}/eval.jsonl", "eval_path", "no such file"),
          merge(on_jsonl(), {"data": {"options": {"eval_path": "{tmp}/eval.jsonl"}}}),
          files={"data.jsonl": jsonl(GOOD_LINE)}),
    Fault("sft-jsonl-missing", ("{tmp}/data.jsonl", "no such file", "dataset 'jsonl'"), on_jsonl(), command="sft"),
    Fault("sft-jsonl-bad-json", ("{tmp}/data.jsonl, line 2", "not valid JSON"), on_jsonl(), command="sft",
          files={"data.jsonl": jsonl(GOOD_LINE, "{prompt: x}")}),
    Fault("sft-jsonl-lone-surrogate", ("{tmp}/data.jsonl, line 1", "lone surrogate"), on_jsonl(), command="sft",
          files={"data.jsonl": jsonl('{"prompt": "x", "solution": "a\\udc80"}', GOOD_LINE)}),
    Fault("sft-jsonl-empty", ("{tmp}/data.jsonl", "no records"), on_jsonl(), command="sft",
          files={"data.jsonl": "\n\n"}),
    Fault("eval-jsonl-empty", ("{tmp}/data.jsonl", "no records"), on_jsonl(), command="eval",
          args=eval_args("--split", "train"), files={"data.jsonl": ""}),
    Fault("eval-jsonl-binary", ("{tmp}/data.jsonl", "line 1", "UTF-8"), on_jsonl(), command="eval",
          args=eval_args("--split", "train"), files={"data.jsonl": b"\xff\xfe\x00binary\x00"}),
    Fault("eval-jsonl-lone-surrogate", ("{tmp}/data.jsonl, line 1", "prompt", "lone surrogate"), on_jsonl(),
          command="eval", args=eval_args("--split", "train"),
          files={"data.jsonl": jsonl('{"prompt": "reverse: \\ud800 =", "solution": "x"}')}),
    Fault("eval-split-without-records", ("eval split", "no records"), command="eval",
          args=eval_args(), change={"data": {"options": {"eval_size": 0}}}),
    Fault("train-reward-pairs-missing", ("{tmp}/pairs.jsonl", "No such file"), command="train-reward",
          text=reward_model_config()),
    Fault("train-reward-pairs-empty", ("{tmp}/pairs.jsonl", "no records"), command="train-reward",
          text=reward_model_config(), files={"pairs.jsonl": "\n"}),
    Fault("train-reward-pairs-directory", ("{tmp}/pairs.jsonl", "directory"), command="train-reward",
          text=reward_model_config(), files={"pairs.jsonl/": ""}),
    Fault("train-reward-pairs-binary", ("{tmp}/pairs.jsonl, line 1", "not valid UTF-8"), command="train-reward",
          text=reward_model_config(), files={"pairs.jsonl": b"\xff\xfe\x00binary\x00"}),
    Fault("train-reward-pairs-lone-surrogate", ("{tmp}/pairs.jsonl, line 2", "lone surrogate"),
          command="train-reward", text=reward_model_config(),
          files={"pairs.jsonl": jsonl(PAIR, '{"prompt": "p", "chosen": "\\ud800", "rejected": "b"}')}),
    Fault("train-reward-label-score-nan", ("{tmp}/labels.jsonl, line 1", "score", "finite number"),
          command="train-reward", text=reward_model_config(data={"path": "{tmp}/labels.jsonl"}),
          files={"labels.jsonl": '{"prompt": "p", "response": "a", "score": NaN}\n'}),
    Fault("train-reward-pair-wrong-type", ("{tmp}/pairs.jsonl, line 1", "chosen"), command="train-reward",
          text=reward_model_config(), files={"pairs.jsonl": jsonl({"prompt": "p", "chosen": 3, "rejected": "b"})}),
    # ---- rewards and datasets misbehaving (isolation: none runs the reward in the main process) ----------------
    Fault("reward-raises-isolation-none", ("reward 'raises'", "plugin 'faulty'", "ValueError: kaboom"),
          rewards({"name": "raises", "isolation": "none"}), plugin="faulty"),
    Fault("reward-hangs-isolation-none", ("reward 'hangs'", "plugin 'isolation'", "timeout_s=0.5"),
          rewards({"name": "hangs", "timeout_s": 0.5, "isolation": "none"}), plugin="isolation"),
    Fault("reward-sys-exit-isolation-none", ("reward 'exits_three'", "plugin 'isolation'", "sys.exit(3)"),
          rewards({"name": "exits_three", "isolation": "none"}), plugin="isolation"),
    Fault("reward-sys-exit-0-no-timeout-isolation-none", ("reward 'exits_zero'", "sys.exit(0)"),
          rewards({"name": "exits_zero", "isolation": "none", "timeout_s": None}), plugin="isolation"),
    Fault("reward-keyboard-interrupt-isolation-none", ("reward 'interrupts'", "plugin 'isolation'",
                                                       "KeyboardInterrupt"),
          rewards({"name": "interrupts", "isolation": "none"}), plugin="isolation"),
    Fault("reward-wrong-length-isolation-none", ("reward 'wrong_length'", "5 values for 4 samples"),
          rewards({"name": "wrong_length", "isolation": "none"}), plugin="faulty"),
    Fault("reward-returns-nan-isolation-none", ("reward 'not_a_number'", "returned nan", "sample 0"),
          rewards({"name": "not_a_number", "isolation": "none"}), plugin="faulty"),
    Fault("reward-returns-dict-isolation-none", ("reward 'answers_dict'", "returned dict, not a sequence"),
          rewards({"name": "answers_dict", "isolation": "none"}), plugin="isolation"),
    Fault("reward-mutates-samples-isolation-none", ("reward 'sees'", "saw 4 samples"),
          rewards({"name": "mutates", "isolation": "none"}, {"name": "sees", "isolation": "none"}),
          plugin="isolation"),
    Fault("reward-changes-directory-isolation-none", ("reward 'moves_away'", "second batch"),
          isolated({"name": "moves_away", "isolation": "none"},
                   train={"output_dir": "run", "updates": 2, "save_every": 1}),
          plugin="isolation", present=("{tmp}/run/checkpoints/update-000001/state.json",)),
    Fault("reward-exits-in-init", ("reward 'exits_in_init'", "plugin 'failing_starts'", "failed to start",
                                   "SystemExit: 4"),
          rewards({"name": "exits_in_init"}), plugin="failing_starts"),
    Fault("reward-exits-in-init-isolation-none", ("reward 'exits_in_init'", "plugin 'failing_starts'",
                                                  "SystemExit: 4"),
          rewards({"name": "exits_in_init", "isolation": "none"}), plugin="failing_starts"),
    Fault("reward-fails-to-start-isolation-none", ("reward 'fails_to_start'", "plugin 'faulty'", "no licence"),
          rewards({"name": "fails_to_start", "isolation": "none"}), plugin="faulty"),
    Fault("reward-raises-in-eval", ("reward 'raises'", "plugin 'faulty'", "kaboom"), rewards({"name": "raises"}),
          command="eval", args=eval_args("--out", "{tmp}/samples.jsonl"), plugin="faulty",
          absent=("{tmp}/samples.jsonl", "{tmp}/eval.json")),
    Fault("reward-raises-in-sft-evaluation", ("reward 'raises'", "plugin 'faulty'", "kaboom"),
          merge(rewards({"name": "raises"}), {"sft": {"eval_every": 1}}), command="sft", plugin="faulty"),
    Fault("plugin-exits-at-import-eval", ("unknown reward 'quits'", "failed to load: exits_at_import"),
          rewards({"name": "quits"}), command="eval", args=eval_args(), plugin="exits_at_import"),
    Fault("dataset-exits-in-init", ("dataset 'exits_in_init'", "plugin 'faulty_data'", "SystemExit: 6"),
          {"data": {"dataset": "exits_in_init", "options": {"size": DELETE, "eval_size": DELETE}}}, plugin="faulty_data"),
    Fault("dataset-raises-in-records", ("dataset 'raises_in_records'", "RaisesInRecords", "OSError: the disk is on fire"),
          {"data": {"dataset": "raises_in_records", "options": {"size": DELETE, "eval_size": DELETE}}}, plugin="faulty_data"),
    Fault("dataset-yields-strings", ("dataset 'yields_strings'", "YieldsStrings", "yielded a str, not a Record"),
          {"data": {"dataset": "yields_strings", "options": {"size": DELETE, "eval_size": DELETE}}}, plugin="faulty_data"),
    # ---- allow and block lists naming no plugin (a typo would silently load or block nothing) -----------------
    Fault("allow-list-typo", ("plugins.allow", "'rule_reward'", "rule_rewards"),
          {"plugins": {"allow": ["rule_reward", "datasets"]}}),
    Fault("block-list-typo", ("plugins.block", "'rule_reward'", "rule_rewards"),
          {"plugins": {"block": ["rule_reward"]}}),
    Fault("allow-env-typo", ("PPO_CORE_PLUGINS", "'dataset'", "datasets"),
          env={"PPO_CORE_PLUGINS": "rule_rewards,dataset"}),
    Fault("block-env-typo", ("PPO_CORE_BLOCK_PLUGINS", "'ppo-core-reward'", "ppo-core-rewards"),
          env={"PPO_CORE_BLOCK_PLUGINS": "ppo-core-reward"}),
    # ---- damaged checkpoints: with every checkpoint damaged, --resume names them and changes nothing ----------
    Fault("resume-weights-truncated", ("--resume", "no intact checkpoint", "policy/model.safetensors"),
          args=RESUME, run_dir="previous", files=in_every_checkpoint("policy/model.safetensors", TRUNCATED)),
    Fault("resume-optimizer-truncated", ("--resume", "no intact checkpoint", "optimizer.pt"),
          args=RESUME, run_dir="previous", files=in_every_checkpoint("optimizer.pt", TRUNCATED)),
    Fault("resume-value-head-missing", ("--resume", "policy/value_head.safetensors is missing"),
          args=RESUME, run_dir="previous", files=in_every_checkpoint("policy/value_head.safetensors", REMOVED)),
    Fault("resume-rng-missing", ("--resume", "rng.safetensors is missing"),
          args=RESUME, run_dir="previous", files=in_every_checkpoint("rng.safetensors", REMOVED)),
    Fault("resume-state-json-garbage", ("--resume", "state.json"),
          args=RESUME, run_dir="previous", files=in_every_checkpoint("state.json", "{not json")),
    Fault("resume-manifest-garbage", ("--resume", "manifest.json unreadable"),
          args=RESUME, run_dir="previous", files=in_every_checkpoint("manifest.json", "[]")),
    Fault("model-weights-truncated", ("model.path", "{tmp}/cut-model", "deserializing header"),
          {"model": {"path": "{tmp}/cut-model"}},
          files={**{f"cut-model/{name}": f"@{{model}}/{name}" for name in
                    ("config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors")},
                 "cut-model/model.safetensors": b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":"}),
    # ---- outputs that cannot be written: refused before any compute -------------------------------------------
    Fault("output-dir-is-a-file", ("train.output_dir", "{tmp}/run", "is a file"), files={"run": "a file\n"}),
    Fault("output-dir-under-a-file", ("train.output_dir", "{tmp}/afile/run"),
          {"train": {"output_dir": "{tmp}/afile/run"}}, files={"afile": "a file\n"}),
    Fault("output-dir-name-too-long", ("train.output_dir", "File name too long"),
          {"train": {"output_dir": "{tmp}/" + LONG_NAME}}),
    Fault("sft-output-dir-is-a-file", ("sft.output_dir", "{tmp}/sft-run", "is a file"),
          {"sft": {"output_dir": "{tmp}/sft-run"}}, command="sft", files={"sft-run": "a file\n"}),
    Fault("eval-out-is-a-directory", ("eval: the samples file", "{tmp}/samples is a directory"), command="eval",
          args=eval_args("--out", "{tmp}/samples"), files={"samples/": ""}),
    Fault("eval-json-is-a-directory", ("eval: the numbers file", "{tmp}/numbers is a directory"), command="eval",
          args=eval_args("--out", "{tmp}/samples.jsonl", "--json", "{tmp}/numbers"), files={"numbers/": ""},
          absent=("{tmp}/samples.jsonl",)),
    Fault("eval-out-under-a-file", ("eval: the samples file", "{tmp}/afile is a file"), command="eval",
          args=eval_args("--out", "{tmp}/afile/samples.jsonl"), files={"afile": "a file\n"}),
    Fault("train-reward-output-is-a-file", ("output_dir", "{tmp}/rm", "is a file"), command="train-reward",
          text=reward_model_config(), files={"rm": "a file\n", "pairs.jsonl": jsonl(PAIR, PAIR)},
          args=("--overwrite",)),
    Fault("train-reward-output-under-a-file", ("output_dir", "{tmp}/afile is a file"), command="train-reward",
          text=reward_model_config(output_dir="{tmp}/afile/rm"),
          files={"afile": "a file\n", "pairs.jsonl": jsonl(PAIR, PAIR)}),
    Fault("init-model-into-a-file", ("init-model", "{tmp}/afile"), argv=("init-model", "{tmp}/afile", "--size", "tiny"),
          files={"afile": "a file\n"}),
    # ---- --overwrite never deletes what is not a run (the issue's `--set train.output_dir=. --overwrite`) -------
    Fault("overwrite-the-current-directory", ("train.output_dir", "refusing to --overwrite", "current directory"),
          args=("--set", "train.output_dir=.", "--overwrite"), files={"notes.txt": "mine\n"}),
    Fault("overwrite-a-folder-of-user-files", ("train.output_dir", "refusing to --overwrite", "thesis.tex"),
          {"train": {"output_dir": "{tmp}/mine"}}, args=("--overwrite",), files={"mine/thesis.tex": "mine\n"}),
    Fault("overwrite-home", ("train.output_dir", "home directory"), {"train": {"output_dir": "{tmp}/home"}},
          args=("--overwrite",), env={"HOME": "{tmp}/home"}, files={"home/.bashrc": "mine\n"}),
    # the new run dies in update 1 (every step non-finite): the old run stays, byte for byte
    Fault("overwrite-whose-new-run-fails", ("non-finite",),
          {"optim": {"max_grad_norm": None}, "ppo": {"vf_coef": 1e300}, "train": {"max_nonfinite_steps": 1}},
          args=("--overwrite",), run_dir="previous"),
    # ---- stop 14's options: FSDP outside torchrun, the reward head's pooling, the demo's seeds ------------------
    Fault("train-parallel-fsdp-without-torchrun", ("bad.yaml", "train.parallel", "torchrun"),
          {"train": {"parallel": "fsdp"}}),
    Fault("train-parallel-unknown", ("bad.yaml", "train.parallel"), {"train": {"parallel": "zero3"}}),
    Fault("train-reward-unknown-pool", ("bad.yaml", "train.pool"), command="train-reward",
          text=reward_model_config(train={"epochs": 1, "pool": "median"}), files={"pairs.jsonl": jsonl(PAIR, PAIR)},
          absent=("rm",)),
    Fault("demo-seeds-twice", ("demo", "--seeds", "twice"), argv=("demo", "--seeds", "0", "0", "--out", "{tmp}/demo"),
          absent=("demo",)),
    Fault("demo-seed-and-seeds", ("demo", "--seed", "--seeds"),
          argv=("demo", "--seed", "1", "--seeds", "0", "1", "--out", "{tmp}/demo"), absent=("demo",)),
    # ---- a run directory held by another live process -----------------------------------------------------------
    Fault("resume-while-another-run-holds-it", ("train.output_dir", "in use by another ppo-core process",
                                                "PID {holder}"),
          args=RESUME, run_dir="previous", locked=True),
    Fault("overwrite-while-another-run-holds-it", ("train.output_dir", "in use", "PID {holder}"),
          args=("--overwrite",), run_dir="previous", locked=True),
    Fault("sft-resume-while-another-run-holds-it", ("train.output_dir", "in use", "PID {holder}"),
          command="sft", args=("--resume",), run_dir="previous", locked=True),
    Fault("sft-overwrite-while-another-run-holds-it", ("train.output_dir", "in use", "PID {holder}"),
          command="sft", args=("--overwrite",), run_dir="previous", locked=True),
    # train-reward takes no lock: a run's folder is refused as not a reward model's
    Fault("train-reward-into-a-held-run", ("output_dir", "{tmp}/run", "refusing to --overwrite", "config.yaml"),
          command="train-reward", text=reward_model_config(output_dir="{tmp}/run"), args=("--overwrite",),
          run_dir="previous", locked=True, files={"pairs.jsonl": jsonl(PAIR, PAIR)}),
]


@pytest.mark.parametrize("fault", COMMAND_FAULTS, ids=[fault.id for fault in COMMAND_FAULTS])
def test_fault_is_one_line_naming_where(fault, tmp_path, tiny_model, request, make_distribution, monkeypatch,
                                        capsys):
    check_fault_in_process(fault, tmp_path, tiny_model, request, make_distribution, monkeypatch, capsys)


# ---- a reward worker that never gets ready: bounded by max(timeout_s, START_TIMEOUT_S) ----------------------------
START_FAULTS = [
    Fault("reward-hangs-while-starting", ("reward 'hangs_in_init'", "plugin 'failing_starts'", "failed to start",
                                          "not ready within 1 s"),
          rewards({"name": "hangs_in_init", "timeout_s": 0.5}), plugin="failing_starts"),
    Fault("reward-hangs-while-starting-in-eval", ("reward 'hangs_in_init'", "not ready within 1 s"),
          rewards({"name": "hangs_in_init", "timeout_s": 0.5}), plugin="failing_starts", command="eval",
          args=eval_args()),
]


@pytest.mark.parametrize("fault", START_FAULTS, ids=[fault.id for fault in START_FAULTS])
def test_a_worker_that_never_gets_ready_is_a_named_fault(fault, tmp_path, tiny_model, request, make_distribution,
                                                         monkeypatch, capsys):
    monkeypatch.setattr("ppo_core.rewards.isolation.START_TIMEOUT_S", 1.0)  # 120 s in a real run
    check_fault_in_process(fault, tmp_path, tiny_model, request, make_distribution, monkeypatch, capsys)


# ---- one damaged checkpoint: --resume warns once, naming the file, and goes on from the intact older one ----------
FALLBACK_FAULTS = [
    Fault("fallback-weights-truncated", ("policy/model.safetensors",),
          files={"run/checkpoints/update-000002/policy/model.safetensors": TRUNCATED}),
    Fault("fallback-optimizer-truncated", ("optimizer.pt",),
          files={"run/checkpoints/update-000002/optimizer.pt": TRUNCATED}),
    Fault("fallback-value-head-missing", ("policy/value_head.safetensors is missing",),
          files={"run/checkpoints/update-000002/policy/value_head.safetensors": REMOVED}),
    Fault("fallback-rng-missing", ("rng.safetensors is missing",),
          files={"run/checkpoints/update-000002/rng.safetensors": REMOVED}),
    Fault("fallback-state-json-garbage", ("state.json",),
          files={"run/checkpoints/update-000002/state.json": "{not json"}),
]


@pytest.mark.parametrize("fault", FALLBACK_FAULTS, ids=[fault.id for fault in FALLBACK_FAULTS])
def test_one_damaged_checkpoint_falls_back_with_one_warning(fault, tmp_path, tiny_model, previous_run, monkeypatch,
                                                            capsys):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(previous_run, tmp_path / "run")
    for name, text in fault.files.items():
        write_case_file(tmp_path, name, text, {})
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(substitute(merge(BASE, {"train": {"updates": 3, "save_every": 1}}),
                                                tmp=tmp_path, model=tiny_model)))
    capsys.readouterr()
    with as_a_cli_process(), time_limit(CASE_SECONDS):
        code = main(["train", str(config), "--resume"])
    out, err = capsys.readouterr()
    assert code == 0 and "Traceback" not in out + err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: checkpoint update-000002 is damaged"), err
    assert all(fragment in lines[0] for fragment in (*fault.expect, "resuming from update-000001")), lines[0]
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert metrics[0] == (previous_run / "metrics.jsonl").read_text().splitlines()[0]  # update 1 kept as it was
    assert [json.loads(line)["update"] for line in metrics] == [1, 2, 3]
    assert checkpoints.verify_checkpoint(checkpoints.checkpoint_dir(tmp_path / "run", 3)) is None


# ---- SIGKILLs: during --overwrite, and of a process that tried to take a held lock ---------------------------------
# Runs `ppo-core ...` with one function wrapped ("module:attribute") to act on its Nth call: "kill" SIGKILLs the
# process; a path pauses it (writing PATH.paused) until a file PATH exists.
AT_NTH_CALL = r"""
import importlib, os, signal, sys, time

module_name, _, attribute = sys.argv[1].partition(":")
nth, action, calls = int(sys.argv[2]), sys.argv[3], [0]
owner = importlib.import_module(module_name)
*path, name = attribute.split(".")
for part in path:
    owner = getattr(owner, part)
original = getattr(owner, name)

def acting(*args, **kwargs):
    calls[0] += 1
    if calls[0] == nth and action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if calls[0] == nth and action != "kill":
        open(action + ".paused", "w").close()
        while not os.path.exists(action):
            time.sleep(0.05)
    return original(*args, **kwargs)

setattr(owner, name, acting)
if __name__ == "__main__":  # a reward's worker process re-imports this script
    from ppo_core.cli import main
    sys.exit(main(sys.argv[4:]))
"""


def at_nth_call(tmp: Path, target: str, nth: int, action: str, *argv: str) -> list[str]:
    """The command line of `ppo-core ARGV` with ``target``'s Nth call acted on (see AT_NTH_CALL)."""
    script = tmp / "at_nth_call.py"
    script.write_text(AT_NTH_CALL, encoding="utf-8")
    return [sys.executable, str(script), target, str(nth), action, *argv]


def run_killed_at(tmp: Path, target: str, nth: int, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(at_nth_call(tmp, target, nth, "kill", *argv), capture_output=True, text=True, cwd=tmp,
                          timeout=CASE_SECONDS)


def run_files(run: Path) -> dict[str, str]:
    """The run's files by content hash; the lock file holds whichever PID last took the lock."""
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file() and p.name != LOCK_FILE}


def write_run_config(tmp: Path, model: Path, **train: Any) -> Path:
    config = tmp / "run.yaml"
    data = merge(BASE, {"train": {"updates": 2, "save_every": 1, **train}})
    config.write_text(yaml.safe_dump(substitute(data, tmp=tmp, model=model)), encoding="utf-8")
    return config


# (case id, the function whose Nth call is killed, N, which run the folder must hold afterwards)
OVERWRITE_KILLS = [
    ("kill-overwrite-in-its-first-checkpoint", "ppo_core.runtime.checkpoints:save_torch_state", 1, "old"),
    ("kill-overwrite-just-before-the-swap", "ppo_core.runtime.rundir:_exchange", 1, "old"),
    ("kill-overwrite-just-after-the-swap", "ppo_core.runtime.rundir:DirectoryLock.release", 2, "new"),
    ("kill-overwrite-in-its-final-save", "ppo_core.runtime.checkpoints:write_atomically", 3, "new"),
]


@pytest.mark.slow
@pytest.mark.parametrize("case, target, nth, holds", OVERWRITE_KILLS, ids=[kill[0] for kill in OVERWRITE_KILLS])
def test_sigkill_during_overwrite_leaves_the_old_run_or_the_new_one(case, target, nth, holds, tmp_path, tiny_model,
                                                                   previous_run, monkeypatch):
    shutil.copytree(previous_run, tmp_path / "run")
    old = run_files(tmp_path / "run")
    config = write_run_config(tmp_path, tiny_model, seed=1)  # the new run differs from the old one
    killed = run_killed_at(tmp_path, target, nth, "train", str(config), "--overwrite")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run = tmp_path / "run"
    old_intact = run_files(run) == old
    latest = checkpoints.latest_checkpoint(run)
    new_in_place = (latest is not None and checkpoints.read_json(latest / checkpoints.STATE_FILE)["config"]
                    ["train"]["seed"] == 1 and (run / MARKER_FILE).is_file())
    assert old_intact != new_in_place, f"old run intact: {old_intact}, new run in place: {new_in_place}"
    assert (old_intact, new_in_place) == ((True, False) if holds == "old" else (False, True))
    # the next start clears what the killed one left beside the run, and finishes the run the folder holds
    monkeypatch.chdir(tmp_path)
    again = ["--overwrite"] if holds == "old" else ["--resume"]
    assert main(["train", str(config), *again]) == 0
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".run")], "a staging folder was left"
    assert [json.loads(line)["update"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert (run / "final" / "model.safetensors").is_file()


LOCK_WAITER_KILLS = [("kill-lock-waiter-resume", "--resume"), ("kill-lock-waiter-overwrite", "--overwrite")]


@pytest.mark.slow
@pytest.mark.parametrize("case, flag", LOCK_WAITER_KILLS, ids=[kill[0] for kill in LOCK_WAITER_KILLS])
def test_sigkill_of_a_process_refused_the_lock_leaves_the_holders_run_alone(case, flag, tmp_path, tiny_model):
    config = write_run_config(tmp_path, tiny_model, updates=4, save_every=2)
    go = tmp_path / "go"  # the holder pauses at its second metrics line (update 1 is logged) until this exists
    holder = subprocess.Popen(at_nth_call(tmp_path, "ppo_core.runtime.metrics:MetricsLog.write", 2, str(go),
                                          "train", str(config)),
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + CASE_SECONDS
        while not Path(f"{go}.paused").exists() and holder.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert holder.poll() is None, holder.communicate()[1]
        # killed right after its flock was refused (reading the holder's PID for the message)
        waiter = run_killed_at(tmp_path, "ppo_core.runtime.rundir:_read_pid", 1, "train", str(config), flag)
        assert waiter.returncode == -signal.SIGKILL, waiter.stderr
        go.touch()
        out, err = holder.communicate(timeout=CASE_SECONDS)
    finally:
        holder.kill()
    assert holder.returncode == 0 and "Traceback" not in err, err
    run = tmp_path / "run"
    assert [json.loads(line)["update"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert checkpoints.verify_checkpoint(checkpoints.checkpoint_dir(run, 4)) is None
    assert (run / "final" / "model.safetensors").is_file()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".run")]


# ---- the count --------------------------------------------------------------------------------------------------
def catalogue_ids() -> list[str]:
    """Every case of the catalogue, by id: the two files' tables and the kill cases."""
    tables = (FAULTS, ISOLATION_FAULTS, COMMAND_FAULTS, START_FAULTS, FALLBACK_FAULTS)
    return ([fault.id for table in tables for fault in table] + [kill[0] for kill in OVERWRITE_KILLS]
            + [kill[0] for kill in LOCK_WAITER_KILLS] + ["sigterm-in-the-demos-ppo-stage"])


def test_the_catalogue_counts_at_least_150_cases():
    ids = catalogue_ids()
    assert len(ids) == len(set(ids)), "two cases share an id"
    assert len(ids) >= 150, len(ids)


@pytest.mark.slow
def test_sigterm_in_the_demos_ppo_stage_stops_it_cleanly(tmp_path):
    go = tmp_path / "go"  # the demo pauses as its first PPO update starts, until this exists
    demo = subprocess.Popen(at_nth_call(tmp_path, "ppo_core.ppo.engine:PPOEngine.step", 1, str(go), "demo",
                                        "--quick", "--out", str(tmp_path / "demo")),
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 4 * CASE_SECONDS
        while not Path(f"{go}.paused").exists() and demo.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert demo.poll() is None, demo.communicate()[1]
        demo.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # the handler runs in the paused main thread
        go.touch()
        _out, err = demo.communicate(timeout=CASE_SECONDS)
    finally:
        demo.kill()
    assert demo.returncode == 130 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("ppo-core: demo stopped by SIGTERM; checkpoint ") and "update-000001" in lines[-1]
