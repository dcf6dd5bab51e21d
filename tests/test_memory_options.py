"""Gradient checkpointing (model.gradient_checkpointing): the same loss and gradients as without it, and sampling
still runs on the KV cache."""

from __future__ import annotations

import pytest
import torch

from ppo_core.commands.train import build_run, make_scorer, next_prompt_batch
from ppo_core.config import load_config


def make_config(model_dir, run_dir, *overrides):
    base = {
        "model": {"path": str(model_dir), "device": "cpu"},
        "data": {"dataset": "reverse", "options": {"size": 32}},
        "rewards": [{"name": "edit_distance"}],
        "ppo": {"rollout_batch_size": 8, "minibatch_size": 8, "epochs": 1},
        "generation": {"max_new_tokens": 8},
        "train": {"updates": 1, "output_dir": str(run_dir), "progress": "none", "seed": 0, "threads": 1},
        "plugins": {"allow": ["rule_rewards", "datasets"]},
    }
    return load_config(None, list(overrides), base=base)


def first_loss_and_gradients(config):
    """The sampled tokens, the sampler's input widths, and the first minibatch's loss and gradients."""
    run = build_run(config)
    with run.composer:
        widths = []
        hook = run.model.policy.register_forward_pre_hook(
            lambda module, args, kwargs: widths.append(kwargs["input_ids"].size(1)), with_kwargs=True)
        rollout, _ = run.engine.collect_rollout(next_prompt_batch(run), make_scorer(run.composer, run.tokenizer))
        hook.remove()
        run.model.train()
        loss, _ = run.engine._loss(rollout, torch.arange(len(rollout)))
        loss.backward()
        gradients = {name: p.grad.clone() for name, p in run.model.named_parameters() if p.grad is not None}
        return rollout.sequences, widths, loss.item(), gradients


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_gradient_checkpointing_gives_the_same_loss_and_sampling_keeps_its_cache(tiny_model_dir, tmp_path, lora):
    if lora:
        pytest.importorskip("peft")
    extra = ["model.lora={r: 4, alpha: 8, target_modules: [c_attn, c_fc]}"] if lora else []
    plain = first_loss_and_gradients(make_config(tiny_model_dir, tmp_path / "a", *extra))
    checkpointed = first_loss_and_gradients(make_config(tiny_model_dir, tmp_path / "b", *extra,
                                                        "model.gradient_checkpointing=true"))
    assert torch.equal(plain[0], checkpointed[0])  # the same samples
    widths = checkpointed[1]
    assert widths[0] > 1 and 1 in widths  # prefill, then one token per step: the KV cache is in use
    assert abs(plain[2] - checkpointed[2]) <= 1e-6
    assert plain[3].keys() == checkpointed[3].keys() and plain[3]
    for name, gradient in plain[3].items():
        torch.testing.assert_close(checkpointed[3][name], gradient, rtol=1e-5, atol=1e-6, msg=name)
