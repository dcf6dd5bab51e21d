"""Sampling and the log-prob forward: the speed-ups (preallocated KV cache, logits of response positions only)
must give what the plain transformers calls give."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import ppo_core.modeling.compat as models
import ppo_core.ppo.rollout as rollout
from ppo_core.modeling.compat import fuse_activations
from ppo_core.modeling.heads import MLPHead
from ppo_core.modeling.tiny import init_model
from ppo_core.ppo.actor_critic import ActorCritic


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = init_model(tmp_path_factory.mktemp("models") / "tiny", "tiny", seed=0)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = fuse_activations(AutoModelForCausalLM.from_pretrained(path).eval())
    batch = tokenizer(["reverse: abc =", "reverse: hello =", "x"], return_tensors="pt", padding=True)
    return model, tokenizer, batch


def sample(model, tokenizer, batch, max_new_tokens=12):
    generator = torch.Generator().manual_seed(3)
    return rollout.sample_responses(model, batch["input_ids"], batch["attention_mask"], max_new_tokens,
                                    tokenizer.eos_token_id, tokenizer.pad_token_id, generator)


def test_the_preallocated_cache_is_used_and_samples_what_the_default_cache_samples(tiny, monkeypatch):
    model, tokenizer, batch = tiny
    cache = rollout.preallocated_cache(model, 40)
    assert cache is not None and all(type(layer).__name__ == "PreallocatedLayer" for layer in cache.layers)
    ours = sample(model, tokenizer, batch)
    monkeypatch.setattr(rollout, "preallocated_cache", lambda *args: None)
    default = sample(model, tokenizer, batch)
    assert ours.tokens.size(1) == 12
    assert torch.equal(ours.tokens, default.tokens) and torch.equal(ours.mask, default.mask)


def test_the_preallocated_cache_refuses_to_overflow(tiny):
    model, _, batch = tiny
    cache = rollout.preallocated_cache(model, batch["input_ids"].size(1))
    keyword = rollout._cache_argument(model)  # `cache` in transformers 5.x, `past_key_values` in 4.x
    out = model(**batch, use_cache=True, **{keyword: cache})
    with pytest.raises(RuntimeError, match="sized for"):
        model(input_ids=batch["input_ids"][:, :1], use_cache=True, **{keyword: rollout._returned_cache(out)})


@pytest.mark.parametrize("shared", [True, False])
def test_logits_and_values_of_response_positions_only_match_the_full_forward(tiny, monkeypatch, shared):
    model, tokenizer, batch = tiny
    assert models.logits_to_keep(model, 5) == {"logits_to_keep": 5}
    responses = sample(model, tokenizer, batch)
    sequences = torch.cat([batch["input_ids"], responses.tokens], dim=1)
    mask = torch.cat([batch["attention_mask"].bool(), responses.mask], dim=1)
    torch.manual_seed(0)
    backbone = None if shared else model.transformer
    head = MLPHead(model.config.n_embd, 16)
    torch.nn.init.normal_(head.out.weight)  # the real head starts at zero, which would hide a wrong slice
    actor_critic = ActorCritic(model, head, backbone)
    prompt = batch["input_ids"].size(1)
    kept = rollout.response_outputs(actor_critic, sequences, mask, prompt, 0.7, with_entropy=True)
    reference = rollout.response_outputs(model, sequences, mask, prompt, 0.7, with_values=False)
    monkeypatch.setattr(models, "logits_to_keep", lambda *args: {})
    monkeypatch.setattr(rollout, "logits_to_keep", lambda *args: {})
    full = rollout.response_outputs(actor_critic, sequences, mask, prompt, 0.7, with_entropy=True)
    full_reference = rollout.response_outputs(model, sequences, mask, prompt, 0.7, with_values=False)
    assert kept.logprobs.shape == full.logprobs.shape == responses.tokens.shape
    for ours, theirs in [(kept.logprobs, full.logprobs), (kept.values, full.values),
                         (kept.entropy, full.entropy), (reference.logprobs, full_reference.logprobs)]:
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_entropy_as_a_statistic_only_is_the_same_number_outside_the_graph(tiny):
    model, tokenizer, batch = tiny
    responses = sample(model, tokenizer, batch)
    sequences = torch.cat([batch["input_ids"], responses.tokens], dim=1)
    mask = torch.cat([batch["attention_mask"].bool(), responses.mask], dim=1)
    prompt = batch["input_ids"].size(1)
    with torch.enable_grad():
        bonus = rollout.response_outputs(model, sequences, mask, prompt, 0.7, with_values=False, with_entropy=True)
        statistic = rollout.response_outputs(model, sequences, mask, prompt, 0.7, with_values=False,
                                             with_entropy=True, entropy_grad=False)
    assert bonus.entropy.requires_grad and not statistic.entropy.requires_grad
    assert statistic.logprobs.requires_grad  # the policy loss still has its gradient
    assert torch.equal(statistic.entropy, bonus.entropy.detach())
