"""LoRA PPO (model.lora, peft): only the adapters and the value head train, the reference is the policy with its
adapters off (no second copy), checkpoints hold the adapters and resume exactly, and the final output loads."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from ppo_core.commands.train import build_run, train
from ppo_core.config import load_config
from ppo_core.errors import ConfigError
from ppo_core.modeling.loading import load_causal_lm, load_tokenizer
from ppo_core.runtime.metrics import read_metrics

peft = pytest.importorskip("peft")

LORA = ["model.lora.r=4", "model.lora.alpha=8", "model.lora.target_modules=[c_attn]"]


def make_config(model_dir, run_dir, *overrides):
    base = {
        "model": {"path": str(model_dir)},
        "data": {"dataset": "reverse", "options": {"size": 64}},
        "rewards": [{"name": "edit_distance"}],
        "ppo": {"rollout_batch_size": 16, "minibatch_size": 8, "epochs": 2, "kl": {"coef": 0.01}},
        "generation": {"max_new_tokens": 6},
        "optim": {"lr": 1e-2, "schedule": "constant"},
        "train": {"updates": 3, "output_dir": str(run_dir), "progress": "none", "seed": 0},
        "plugins": {"allow": ["rule_rewards", "datasets"]},
    }
    return load_config(None, [*LORA, *overrides], base=base)


def without_timing(rows):
    return [{k: v for k, v in row.items() if not k.startswith(("time/", "tokens_per_s"))} for row in rows]


def test_only_adapters_and_value_head_train_and_the_reference_is_the_policy_without_them(tiny_model_dir, tmp_path):
    run = build_run(make_config(tiny_model_dir, tmp_path / "run"))
    with run.composer:
        trained = {name for name, p in run.model.named_parameters() if p.requires_grad}
        assert trained and all("lora_" in name or name.startswith("value_head.") for name in trained)
        assert sum(p.numel() for p in run.engine.reference.parameters()) == 0  # no second copy of the weights
        base = {name: p.detach().clone() for name, p in run.model.policy.named_parameters() if not p.requires_grad}
        from ppo_core.commands.train import make_scorer, next_prompt_batch

        stats = run.engine.step(next_prompt_batch(run), make_scorer(run.composer, run.tokenizer))
        assert stats["kl"] == 0.0  # fresh adapters add zero: the policy is its reference before the first step
        after = dict(run.model.policy.named_parameters())
        assert all(torch.equal(after[name], value) for name, value in base.items())  # the base never moves


def test_the_final_output_is_the_adapters_and_loads_as_one_model(tiny_model_dir, tmp_path):
    final = train(make_config(tiny_model_dir, tmp_path / "run", "model.lora.save_merged=true"))
    assert (final / "adapter_config.json").is_file() and (final / "adapter_model.safetensors").is_file()
    assert not (final / "model.safetensors").exists()
    assert (final / "value_head.safetensors").is_file()
    tokenizer = load_tokenizer(str(final))
    merged_by_us = load_causal_lm(str(final), tokenizer=tokenizer)  # base + adapters, merged: what eval reads
    from transformers import AutoModelForCausalLM

    merged_on_disk = AutoModelForCausalLM.from_pretrained(final / "merged")  # transformers alone, no peft
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.tensor([tokenizer("abc")["input_ids"]])
    with torch.no_grad():
        ours, disk, start = (m(input_ids=ids).logits for m in (merged_by_us, merged_on_disk, base))
    torch.testing.assert_close(ours, disk, rtol=0, atol=1e-5)
    assert not torch.allclose(ours, start, atol=1e-4)  # the adapters learned something
    adapters = load_file(final / "adapter_model.safetensors")
    assert adapters and all("lora_" in key for key in adapters)


def test_resume_continues_exactly_with_lora(tiny_model_dir, tmp_path):
    straight = make_config(tiny_model_dir, tmp_path / "straight", "train.updates=4", "train.save_every=2")
    final_straight = train(straight)
    interrupted = make_config(tiny_model_dir, tmp_path / "resumed", "train.updates=4", "train.save_every=2")
    first_half = interrupted.model_copy(update={"train": interrupted.train.model_copy(update={"updates": 3})})
    train(first_half)
    final_resumed = train(interrupted, resume=True)
    a = without_timing(read_metrics(tmp_path / "straight" / "metrics.jsonl"))
    b = without_timing(read_metrics(tmp_path / "resumed" / "metrics.jsonl"))
    assert [row["update"] for row in b] == [1, 2, 3, 4] and a == b
    for name in ("adapter_model.safetensors", "value_head.safetensors"):
        left, right = load_file(final_straight / name), load_file(final_resumed / name)
        assert left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


@pytest.mark.parametrize("override, message", [
    ("model.critic=separate", "model.lora: Value error, LoRA runs use `critic: shared`"),
    ("model.lora.dropout=0.1", "model.lora.dropout: Value error, must be 0"),
    ("model.lora.target_modules=[no_such_module]", "model.lora.target_modules:"),
])
def test_lora_config_mistakes_are_named(tiny_model_dir, tmp_path, override, message):
    with pytest.raises(ConfigError) as raised:  # at load for the first two, when the adapters are made for the last
        build_run(make_config(tiny_model_dir, tmp_path / "run", override))
    assert message in str(raised.value)
