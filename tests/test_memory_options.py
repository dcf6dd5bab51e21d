"""Gradient checkpointing (model.gradient_checkpointing): the same loss and gradients as without it, and sampling
still runs on the KV cache. Precision (train.precision): half precision refused on the CPU unless forced; forced, it
runs under autocast with fp32 weights and fp32 log-probs for the ratio."""

from __future__ import annotations

import pytest
import torch
import yaml

from ppo_core.commands.train import build_run, make_scorer, next_prompt_batch
from ppo_core.config import load_config
from ppo_core.errors import ConfigError


def base_config(model_dir, run_dir) -> dict:
    return {
        "model": {"path": str(model_dir), "device": "cpu"},
        "data": {"dataset": "reverse", "options": {"size": 32}},
        "rewards": [{"name": "edit_distance"}],
        "ppo": {"rollout_batch_size": 8, "minibatch_size": 8, "epochs": 1},
        "generation": {"max_new_tokens": 8},
        "train": {"updates": 1, "output_dir": str(run_dir), "progress": "none", "seed": 0, "threads": 1},
        "plugins": {"allow": ["rule_rewards", "datasets"]},
    }


def make_config(model_dir, run_dir, *overrides):
    return load_config(None, list(overrides), base=base_config(model_dir, run_dir))


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


# ---- train.precision ---------------------------------------------------------------------------------------
def test_half_precision_on_the_cpu_is_refused_with_the_measured_speed(tiny_model_dir, tmp_path, capsys):
    from ppo_core.cli import main

    config = make_config(tiny_model_dir, tmp_path / "run", "train.precision=bf16")
    with pytest.raises(ConfigError, match=r"train\.precision: bf16 .* ran at \d+\.\d\dx the speed of fp32 .*"
                       r"precision_force"):
        build_run(config)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(base_config(tiny_model_dir, tmp_path / "run")))
    assert main(["train", str(tmp_path / "run.yaml"), "--set", "train.precision=bf16"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "train.precision: bf16" in error and "Traceback" not in error


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_forced_half_precision_runs_an_update_under_autocast_with_fp32_log_probs(tiny_model_dir, tmp_path,
                                                                                 monkeypatch, precision):
    from ppo_core.ppo import engine as engine_module

    run = build_run(make_config(tiny_model_dir, tmp_path / "run", f"train.precision={precision}",
                                "train.precision_force=true", "optim.lr=1e-3"))
    with run.composer:
        logits_dtypes, ratio_dtypes = set(), set()
        run.model.policy.register_forward_hook(lambda module, args, out: logits_dtypes.add(out.logits.dtype))
        real_loss = engine_module.clipped_policy_loss

        def recording_loss(new, old, *rest):
            ratio_dtypes.update({new.dtype, old.dtype})
            return real_loss(new, old, *rest)

        monkeypatch.setattr(engine_module, "clipped_policy_loss", recording_loss)
        before = {name: p.detach().clone() for name, p in run.model.named_parameters()}
        stats = run.engine.step(next_prompt_batch(run), make_scorer(run.composer, run.tokenizer))
        half = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        assert logits_dtypes == {half}  # the forwards ran under autocast
        assert ratio_dtypes == {torch.float32}  # the ratio's log-probs, old and new, are fp32
        assert all(p.dtype == torch.float32 for p in run.model.parameters())  # fp32 master weights
        assert stats["optim/steps"] + stats["optim/nonfinite_skipped"] == 1 and stats["optim/steps"] >= 0
        if precision == "bf16":
            assert stats["optim/steps"] == 1
            assert any(not torch.equal(p, before[name]) for name, p in run.model.named_parameters())
        else:  # the loss scale is kept (and checkpointed) by the engine
            assert run.engine.state_dict()["grad_scaler"]["scale"] > 0


# ---- generation.batch_size ---------------------------------------------------------------------------------
def test_a_sampled_chunks_kv_cache_is_freed_before_the_next_chunk_is_sampled(tiny_model_dir, tmp_path, monkeypatch):
    """generation.batch_size bounds the KV cache at one chunk's: no chunk's cache outlives its chunk (unless the
    caller keeps the states to continue from, an episode's next turn)."""
    import gc
    import weakref

    from ppo_core.ppo import rollout as rollout_module

    caches = []
    real_sample = rollout_module.sample_responses

    def sample_and_watch(*args, **kwargs):
        responses = real_sample(*args, **kwargs)
        caches.append(weakref.ref(responses.states[0].cache))
        return responses

    def check_earlier_chunks(rows, responses):
        gc.collect()
        assert [cache() is None for cache in caches[:-1]] == [True] * (len(caches) - 1)

    monkeypatch.setattr(rollout_module, "sample_responses", sample_and_watch)
    run = build_run(make_config(tiny_model_dir, tmp_path / "run", "generation.batch_size=2"))
    with run.composer:
        batch = next_prompt_batch(run)
        run.engine.generate(batch.input_ids, batch.attention_mask, on_chunk=check_earlier_chunks)
        assert len(caches) == 4
        kept = rollout_module.generate_responses(run.model.policy, batch.input_ids, batch.attention_mask,
                                                 run.config.generation, run.engine.eos_token_id,
                                                 run.engine.pad_token_id, run.engine.generator, keep_states=True)
        assert len(kept.states) == 4 and all(cache() is not None for cache in caches[4:])
