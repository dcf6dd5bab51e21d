"""`ppo-core sft` and `ppo-core eval` on a tiny local checkpoint (nothing downloads).

SFT on `reverse` (2..3-letter words) lowers the loss and raises greedy exact match over the untrained model;
the loss mask covers the response tokens only; the final model loads with transformers and PPO starts from
it; a resumed run matches an uninterrupted one; eval is deterministic and writes its samples and numbers.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ppo_core.cli import main
from ppo_core.commands.evaluate import evaluate_model
from ppo_core.commands.sft import (
    IGNORE_INDEX,
    build_batch,
    build_sft,
    mean_loss,
    sft_step,
    train_sft,
)
from ppo_core.config import load_config
from ppo_core.data.prompts import encode_records, left_pad
from ppo_core.errors import ConfigError, DataError, UserError
from ppo_core.modeling.loading import load_causal_lm, load_tokenizer
from ppo_core.modeling.tiny import init_model
from ppo_core.plugin.contract import Message, Record
from ppo_core.plugin.loading import ALLOW_ENV, BLOCK_ENV
from ppo_core.ppo.rollout import position_ids_from_mask
from ppo_core.runtime.metrics import read_metrics

STEPS = 150
TIMING_KEYS = ("time/", "tokens_per_s")


@pytest.fixture(autouse=True, scope="module")
def one_thread_and_default_plugins():
    """train.threads: 1 sets torch's global thread count; put it back for the other test modules."""
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(ALLOW_ENV, raising=False)
        mp.delenv(BLOCK_ENV, raising=False)
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return init_model(tmp_path_factory.mktemp("models") / "tiny", "tiny", seed=0)


def config_data(model_dir, run_dir, **sft) -> dict:
    return {
        "model": {"path": str(model_dir)},
        "data": {"dataset": "reverse", "options": {"size": 512, "eval_size": 32, "min_len": 2, "max_len": 3}},
        "rewards": [{"name": "exact_match"}, {"name": "edit_distance"}],
        "generation": {"max_new_tokens": 6, "temperature": 0.7},
        "optim": {"lr": 3e-3, "schedule": "constant"},
        "train": {"seed": 0, "threads": 1, "output_dir": str(run_dir), "progress": "none"},
        "plugins": {"allow": ["datasets", "rule_rewards"]},
        "sft": {"steps": STEPS, "batch_size": 32, "log_every": 10, "eval_every": 50, **sft},
    }


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    """One SFT run through the CLI (in process), with the untrained model evaluated before it."""
    root = tmp_path_factory.mktemp("sft")
    data = config_data(tiny_model, root / "run")
    config_path = write_yaml(root / "sft.yaml", data)
    config = load_config(config_path)
    before = evaluate_model(config, tiny_model, decodings=("greedy",))
    tokenizer = load_tokenizer(str(tiny_model))
    eval_records = list(build_sft(config).eval_records)
    loss_before = mean_loss(load_causal_lm(str(tiny_model), tokenizer=tokenizer), eval_records, tokenizer, config,
                            torch.device("cpu"))
    assert main(["sft", str(config_path)]) == 0
    final = root / "run" / "final"
    after = evaluate_model(config, final, decodings=("greedy",))
    final_tokenizer = load_tokenizer(str(final))
    loss_after = mean_loss(load_causal_lm(str(final), tokenizer=final_tokenizer), eval_records, final_tokenizer,
                           config, torch.device("cpu"))
    return {"root": root, "config": config, "config_path": config_path, "final": final, "before": before,
            "after": after, "loss_before": loss_before, "loss_after": loss_after}


# ---- learning ----------------------------------------------------------------------------------------
def test_sft_on_reverse_lowers_the_loss_and_raises_exact_match(trained):
    metrics = read_metrics(trained["root"] / "run" / "metrics.jsonl")
    print(f"train loss {metrics[0]['loss']:.4f} -> {metrics[-1]['loss']:.4f}; eval loss "
          f"{trained['loss_before']:.4f} -> {trained['loss_after']:.4f}; greedy exact match "
          f"{trained['before']['greedy']['exact_match']:.3f} -> {trained['after']['greedy']['exact_match']:.3f}")
    assert metrics[-1]["loss"] < 0.25 * metrics[0]["loss"]
    assert trained["loss_after"] < 0.25 * trained["loss_before"]
    assert trained["before"]["greedy"]["exact_match"] <= 0.05
    assert trained["after"]["greedy"]["exact_match"] >= 0.6
    assert trained["after"]["greedy"]["rewards"]["edit_distance"] > trained["before"]["greedy"]["rewards"]["edit_distance"]
    assert trained["after"]["greedy"]["eos_rate"] == 1.0  # it learned to stop


def test_metrics_have_one_line_per_logged_step(trained):
    metrics = read_metrics(trained["root"] / "run" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(10, STEPS + 1, 10))
    for m in metrics:
        assert {"step", "loss", "lr", "tokens_per_s", "grad_norm", "response_tokens"} <= m.keys()
        assert m["lr"] == pytest.approx(3e-3) and m["tokens_per_s"] > 0
    evaluated = [m["step"] for m in metrics if "eval/loss" in m]
    assert evaluated == [50, 100, 150]
    assert metrics[-1]["eval/exact_match"] >= 0.6 and "eval/reward/edit_distance" in metrics[-1]


def test_final_model_loads_with_transformers_and_ppo_starts_from_it(trained, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ppo_core.commands.train import train

    final = trained["final"]
    model = AutoModelForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    assert (trained["root"] / "run" / "config.yaml").is_file()
    data = config_data(final, tmp_path / "ppo")
    data.update(ppo={"rollout_batch_size": 8, "minibatch_size": 8, "epochs": 1}, train={**data["train"], "updates": 1})
    del data["sft"]
    assert (train(load_config(None, base=data)) / "model.safetensors").is_file()


# ---- the loss mask -----------------------------------------------------------------------------------
def test_loss_mask_covers_response_tokens_only(tiny_model, tmp_path):
    config = load_config(None, base=config_data(tiny_model, tmp_path / "run"))
    run = build_sft(config)
    records = run.records.take(6)
    batch = build_batch(records, run.tokenizer, config)
    # the prompt part is exactly the PPO rollout's prompt batch
    encoded = encode_records(records, run.tokenizer, config.data)
    prompt_ids, prompt_mask = left_pad([p.ids for p in encoded], run.tokenizer.pad_token_id)
    P = batch.prompt_length
    assert torch.equal(batch.input_ids[:, :P], prompt_ids) and torch.equal(batch.attention_mask[:, :P], prompt_mask)
    assert (batch.labels[:, :P] == IGNORE_INDEX).all()
    for row, record in enumerate(records):
        target = run.tokenizer(record.solution, add_special_tokens=False)["input_ids"] + [run.tokenizer.eos_token_id]
        labels = batch.labels[row, P:]
        kept = labels[labels != IGNORE_INDEX].tolist()
        assert kept == target
        assert labels[: len(target)].tolist() == target  # right after the prompt, then only padding
        assert (labels[len(target):] == IGNORE_INDEX).all()
        assert batch.attention_mask[row, P:].sum() == len(target)
    assert run.tokenizer.bos_token_id not in batch.labels  # no special token but eos is learned
    # the loss is the token-mean NLL of those labels: the same as transformers' own causal-LM loss
    from ppo_core.commands.sft import response_nll

    with torch.no_grad():
        nll, n = response_nll(run.model, batch)
        reference = run.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                              position_ids=position_ids_from_mask(batch.attention_mask), labels=batch.labels).loss
    assert n == sum(len(r.solution) + 1 for r in records)
    assert float(nll / n) == pytest.approx(float(reference), rel=1e-5)


def test_micro_batches_give_the_same_step(tiny_model, tmp_path):
    steps = []
    for micro in (None, 8):
        run = build_sft(load_config(None, base=config_data(tiny_model, tmp_path / "run", micro_batch_size=micro)))
        stats = sft_step(run)
        steps.append((stats["loss"], torch.cat([p.detach().flatten() for p in run.model.parameters()])))
    assert steps[0][0] == pytest.approx(steps[1][0], rel=1e-5)
    assert torch.allclose(steps[0][1], steps[1][1], atol=1e-5)


# ---- checkpoints and resume --------------------------------------------------------------------------
def test_resume_from_a_checkpoint_matches_the_uninterrupted_run(tiny_model, tmp_path):
    import shutil

    config = load_config(None, base=config_data(tiny_model, tmp_path / "run", steps=20, save_every=10,
                                                log_every=3, eval_every=0))
    final = train_sft(config)
    reference_weights = load_file(final / "model.safetensors")
    reference_metrics = read_metrics(tmp_path / "run" / "metrics.jsonl")
    checkpoints = sorted((tmp_path / "run" / "checkpoints").iterdir())
    assert [c.name for c in checkpoints] == ["step-000010", "step-000020"]
    assert (checkpoints[0] / "model" / "model.safetensors").is_file()
    shutil.rmtree(checkpoints[1])  # as if the run died after step 10
    shutil.rmtree(final)
    with open(tmp_path / "run" / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 11, "loss": 1.0}\n')  # a line logged after the checkpoint
    train_sft(config, resume=True)
    resumed = load_file(final / "model.safetensors")
    assert resumed.keys() == reference_weights.keys()
    assert all(torch.equal(resumed[k], reference_weights[k]) for k in resumed)

    def without_timing(lines):
        return [{k: v for k, v in m.items() if not k.startswith(TIMING_KEYS)} for m in lines]

    assert without_timing(read_metrics(tmp_path / "run" / "metrics.jsonl")) == without_timing(reference_metrics)


def test_existing_run_dir_needs_overwrite_or_resume(tiny_model, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "something").write_text("x")
    config = load_config(None, base=config_data(tiny_model, tmp_path / "run", steps=1))
    with pytest.raises(UserError, match="--overwrite"):
        train_sft(config)


# ---- eval --------------------------------------------------------------------------------------------
def test_eval_is_deterministic_and_writes_samples_and_numbers(trained, tmp_path):
    config, final = trained["config"], trained["final"]
    first = evaluate_model(config, final, out=tmp_path / "a.jsonl", numbers_out=tmp_path / "a.json")
    second = evaluate_model(config, final, out=tmp_path / "b.jsonl", numbers_out=tmp_path / "b.json")
    assert first == second
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert json.loads((tmp_path / "a.json").read_text()) == first
    assert first["records"] == 32 and set(first) >= {"greedy", "sampled"}
    for decoding in ("greedy", "sampled"):
        numbers = first[decoding]
        assert numbers["exact_match_source"] == "reward:exact_match"
        assert numbers["exact_match"] == numbers["rewards"]["exact_match"]
        assert set(numbers["rewards"]) == {"exact_match", "edit_distance"}
    rows = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 32 and {r["decoding"] for r in rows} == {"greedy", "sampled"}
    for row in rows:
        assert {"prompt", "response", "solution", "stop_reason", "rewards", "exact_match"} <= row.keys()
        assert set(row["rewards"]) == {"exact_match", "edit_distance"}
        assert row["stop_reason"] in ("eos", "length")
    greedy = [r for r in rows if r["decoding"] == "greedy"]
    assert sum(r["exact_match"] for r in greedy) / len(greedy) == first["greedy"]["exact_match"]


def test_eval_without_rewards_computes_exact_match_by_string_equality(trained):
    config = trained["config"].model_copy(update={"rewards": []})
    numbers = evaluate_model(config, trained["final"], samples=16)
    with_reward = evaluate_model(trained["config"], trained["final"], samples=16)
    assert numbers["records"] == 16
    for decoding in ("greedy", "sampled"):
        assert numbers[decoding]["exact_match_source"] == "string" and numbers[decoding]["rewards"] == {}
        assert numbers[decoding]["exact_match"] == with_reward[decoding]["exact_match"]


def test_eval_cli_prints_a_table_and_writes_eval_json(trained, tmp_path, capsys):
    out = tmp_path / "samples.jsonl"
    assert main(["eval", str(trained["config_path"]), "--model", str(trained["final"]), "--samples", "8",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "greedy" in printed and "sampled" in printed and "reward/edit_distance" in printed
    numbers = json.loads((tmp_path / "eval.json").read_text())
    assert numbers["records"] == 8 and len(out.read_text().splitlines()) == 16


# ---- config errors -----------------------------------------------------------------------------------
def test_bad_sft_config_exits_2_without_a_traceback(tiny_model, tmp_path):
    bad = write_yaml(tmp_path / "bad.yaml", config_data(tiny_model, tmp_path / "run", batch_size=32,
                                                         micro_batch_size=5))
    done = subprocess.run([sys.executable, "-m", "ppo_core.cli", "sft", str(bad)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "sft.micro_batch_size" in done.stderr and "must divide batch_size" in done.stderr
    assert not (tmp_path / "run").exists()


def test_sft_and_eval_need_no_rewards_but_ppo_does(tiny_model, tmp_path):
    from ppo_core.commands.train import train

    data = config_data(tiny_model, tmp_path / "run")
    del data["rewards"]
    config = load_config(None, base=data)  # valid: sft and eval run without rewards
    assert config.rewards == []
    with pytest.raises(ConfigError, match="at least one reward"):
        train(config)


def test_stop_at_ends_sft_at_the_first_evaluation_that_meets_it(trained, tiny_model, tmp_path, capsys):
    """The same run as the fixture's (same seed, same steps) stops at step 100 when the condition is the eval
    loss that step 100 reached, and its final model is that step's."""
    logged = read_metrics(trained["root"] / "run" / "metrics.jsonl")
    loss_at_100 = next(m["eval/loss"] for m in logged if m["step"] == 100)
    assert next(m["eval/loss"] for m in logged if m["step"] == 50) > loss_at_100
    config = load_config(None, base=config_data(tiny_model, tmp_path / "run", stop_at=f"eval/loss <= {loss_at_100!r}",
                                                save_every=50))
    final = train_sft(config)
    metrics = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(10, 101, 10))
    assert metrics[-1]["eval/loss"] == pytest.approx(loss_at_100)
    assert "sft: stopping at step 100: eval/loss <= " in capsys.readouterr().out
    assert final.is_dir() and sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-000050"]


@pytest.mark.parametrize("sft, message", [
    ({"stop_at": "eval/exact_match >= 0.9", "eval_every": 0}, "sft.stop_at: Value error, needs eval_every > 0"),
    ({"stop_at": "exact_match >= 0.9"}, "is not `<metric> >= <number>`"),
    ({"stop_at": "eval/exact_match > 0.9"}, "is not `<metric> >= <number>`"),
    ({"stop_at": "eval/exact_match >= high"}, "is not `<metric> >= <number>`"),
])
def test_bad_stop_at_names_the_field(tiny_model, tmp_path, sft, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, base=config_data(tiny_model, tmp_path / "run", **sft))


@pytest.mark.parametrize("change, error, message", [
    ({"data": {"dataset": "reverse", "options": {"size": 64, "eval_size": 0}}}, DataError,
     "sft.stop_at: eval/exact_match is measured on the eval split of dataset 'reverse', which has no records"),
    ({"sft": {"stop_at": "eval/reward/repetition_penalty >= 0.5"}}, ConfigError,
     "by the reward 'repetition_penalty', which is not in `rewards` (edit_distance, exact_match)"),
])
def test_a_stop_at_that_could_never_fire_is_named_before_anything_is_written(tiny_model, tmp_path, change, error,
                                                                           message):
    data = config_data(tiny_model, tmp_path / "run", stop_at="eval/exact_match >= 0.9")
    data["data"] = change.get("data", data["data"])
    data["sft"].update(change.get("sft", {}))
    with pytest.raises(error, match=re.escape(message)):
        train_sft(load_config(None, base=data))
    assert {p.name for p in (tmp_path / "run").iterdir()} <= {".ppo-core-run", ".ppo-core.lock"}  # no config, no model


def test_stop_at_exact_match_needs_eval_records_with_solutions():
    """Transcripts (messages, no solution) log no eval/exact_match: a stop on it would never fire."""
    from ppo_core.config.sections import check_stop_can_fire

    transcripts = [Record(messages=[Message(role="user", content="q"), Message(role="assistant", content="a")])]
    with pytest.raises(DataError, match=re.escape("whose records carry no solution to match (stop on eval/loss")):
        check_stop_can_fire("eval/exact_match >= 0.5", "transcripts", transcripts, set(), "sft.yaml")
    check_stop_can_fire("eval/loss <= 0.5", "transcripts", transcripts, set(), "sft.yaml")  # loss needs none
    check_stop_can_fire("eval/exact_match >= 0.5", "reverse", [Record.from_dict({"prompt": "q", "solution": "a"})],
                        set(), "sft.yaml")
