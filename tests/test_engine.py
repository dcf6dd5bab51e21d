"""The engine end to end on a tiny local checkpoint: exact ratio, learning, determinism, resume, outputs."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import BaseModel
from safetensors.torch import load_file

from ppo_core import Reward, hookimpl
from ppo_core.commands.train import build_run, make_scorer, next_prompt_batch, train
from ppo_core.config import load_config
from ppo_core.modeling.tiny import init_model
from ppo_core.runtime.metrics import read_metrics

TIMING_KEYS = ("time/", "tokens_per_s")


class LetterOptions(BaseModel):
    letter: str = "a"


class LetterShare(Reward):
    """A trivially learnable reward: the share of one letter in the response."""

    name = "letter_share"
    Options = LetterOptions

    def __call__(self, samples):
        return [s.response.count(self.options.letter) / max(len(s.response), 1) for s in samples]


class LetterPlugin:
    @hookimpl
    def register_rewards(self, register):
        register(LetterShare)


PLUGINS = [("letter_plugin", LetterPlugin())]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return init_model(tmp_path_factory.mktemp("models") / "tiny", "tiny", seed=0)


def make_config(model_dir, run_dir, *overrides):
    base = {
        "model": {"path": str(model_dir)},
        "data": {"dataset": "reverse", "options": {"size": 256}},
        "rewards": [{"name": "letter_share", "options": {"letter": "a"}}],
        "ppo": {"rollout_batch_size": 32, "minibatch_size": 8, "epochs": 2, "kl": {"coef": 0.001}},
        "generation": {"max_new_tokens": 16},
        "optim": {"lr": 1e-3, "schedule": "constant"},
        "train": {"updates": 15, "output_dir": str(run_dir), "progress": "none", "seed": 0},
        "plugins": {"allow": ["letter_plugin", "datasets"]},
    }
    return load_config(None, list(overrides), base=base)


def without_timing(records):
    return [{k: v for k, v in r.items() if not k.startswith(TIMING_KEYS)} for r in records]


def test_ratio_is_exactly_one_on_the_first_minibatch(tiny_model, tmp_path):
    config = make_config(tiny_model, tmp_path / "run")
    run = build_run(config, PLUGINS)
    rollout, _ = run.engine.collect_rollout(next_prompt_batch(run), make_scorer(run.composer, run.tokenizer))
    first_losses = []
    original = run.engine._loss

    def record_first(rollout_, rows):
        loss, stats = original(rollout_, rows)
        first_losses.append(stats)
        return loss, stats

    run.engine._loss = record_first
    run.engine.optimise(rollout)
    assert all(p.grad is None for p in run.model.parameters())  # not held through the next rollout
    assert first_losses[0]["approx_kl"] == 0.0
    assert first_losses[0]["clipfrac"] == 0.0
    # later minibatches see a policy that has moved
    assert any(stats["approx_kl"] > 0 for stats in first_losses[1:])


@pytest.mark.parametrize("critic", ["shared", "separate"])
def test_training_raises_a_learnable_reward(tiny_model, tmp_path, critic):
    config = make_config(tiny_model, tmp_path / "run", f"model.critic={critic}")
    final = train(config, extra_plugins=PLUGINS)
    metrics = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [m["update"] for m in metrics] == list(range(1, 16))
    first = sum(m["reward/mean"] for m in metrics[:3]) / 3
    last = sum(m["reward/mean"] for m in metrics[-3:]) / 3
    assert last > first + 0.15, (first, last)
    assert (final / "value_head.safetensors").is_file()
    assert (final / "critic").is_dir() == (critic == "separate")


def test_same_seed_same_metrics_and_a_different_seed_differs(tiny_model, tmp_path):
    runs = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        config = make_config(tiny_model, tmp_path / name, "train.updates=3", f"train.seed={seed}")
        train(config, extra_plugins=PLUGINS)
        runs.append(without_timing(read_metrics(tmp_path / name / "metrics.jsonl")))
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_resume_continues_exactly(tiny_model, tmp_path):
    straight = make_config(tiny_model, tmp_path / "straight", "train.updates=4", "train.save_every=2")
    final_straight = train(straight, extra_plugins=PLUGINS)

    interrupted = make_config(tiny_model, tmp_path / "resumed", "train.updates=4", "train.save_every=2")
    first_half = interrupted.model_copy(update={"train": interrupted.train.model_copy(update={"updates": 3})})
    train(first_half, extra_plugins=PLUGINS)  # leaves checkpoints of update 2 and a metrics line for update 3
    final_resumed = train(interrupted, resume=True, extra_plugins=PLUGINS)

    a = without_timing(read_metrics(tmp_path / "straight" / "metrics.jsonl"))
    b = without_timing(read_metrics(tmp_path / "resumed" / "metrics.jsonl"))
    assert [m["update"] for m in b] == [1, 2, 3, 4]
    assert a == b
    weights_a = load_file(final_straight / "model.safetensors")
    weights_b = load_file(final_resumed / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_final_model_loads_with_transformers_alone(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = make_config(tiny_model, tmp_path / "run", "train.updates=1")
    final = train(config, extra_plugins=PLUGINS)
    model = AutoModelForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    logits = model(**tokenizer(["reverse: abc ="], return_tensors="pt")).logits
    assert logits.shape[-1] == len(tokenizer)
    head = load_file(final / "value_head.safetensors")
    assert set(head) == {"dense.weight", "dense.bias", "out.weight", "out.bias"}
    saved = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    for key in ("update", "reward/mean", "reward/std", "reward/letter_share", "kl", "kl_coef", "entropy",
                "loss/policy", "loss/value", "clipfrac", "approx_kl", "value/explained_variance",
                "response/length_mean", "response/eos_rate", "time/rollout_s", "time/train_s", "tokens_per_s"):
        assert key in saved, key


def test_dropout_is_off_and_value_head_starts_at_zero(tiny_model, tmp_path):
    run = build_run(make_config(tiny_model, tmp_path / "run"), PLUGINS)
    dropouts = [m for m in run.model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(m.p == 0.0 for m in dropouts)
    assert torch.count_nonzero(run.model.value_head.out.weight) == 0
    assert not any(p.requires_grad for p in run.engine.reference.parameters())


def test_micro_batches_add_up_to_the_minibatch_gradient(tiny_model, tmp_path):
    """docs/design.md D5: micro-batch losses weighted by their share of the minibatch's real tokens give the
    gradient (and statistics) of one token mean over the whole minibatch."""
    run = build_run(make_config(tiny_model, tmp_path / "run"), PLUGINS)
    rollout, _ = run.engine.collect_rollout(next_prompt_batch(run), make_scorer(run.composer, run.tokenizer))
    lengths = rollout.response_mask[:8].sum(1)
    assert lengths.min() < lengths.max()  # micro-batches of different token counts: a plain mean of means differs
    rows = torch.arange(8)
    results = []
    for micro in (None, 2):
        run.engine.ppo = run.engine.ppo.model_copy(update={"micro_batch_size": micro})
        stats = run.engine._accumulate_gradients(rollout, rows)
        grads = {name: p.grad.clone() for name, p in run.model.named_parameters() if p.grad is not None}
        results.append((stats, grads))
    (whole, whole_grads), (micro, micro_grads) = results
    assert whole.keys() == micro.keys()
    for key in whole:
        assert micro[key] == pytest.approx(whole[key], rel=1e-5, abs=1e-7), key
    assert whole_grads.keys() == micro_grads.keys()
    for name in whole_grads:
        torch.testing.assert_close(micro_grads[name], whole_grads[name], rtol=1e-4, atol=1e-7, msg=name)


def test_missing_eos_penalty_hits_only_responses_cut_off(tiny_model, tmp_path):
    config = make_config(tiny_model, tmp_path / "run", "ppo.missing_eos_penalty=5.0", "generation.max_new_tokens=4")
    run = build_run(config, PLUGINS)
    scorer = make_scorer(run.composer, run.tokenizer)
    rollout, stats = run.engine.collect_rollout(next_prompt_batch(run), scorer)
    # with 4 new tokens nearly every response is cut off, and the penalty dominates the letter share
    assert stats["response/eos_rate"] < 0.5
    assert stats["score/mean"] < -5.0 * (1 - stats["response/eos_rate"]) + 1.0


@pytest.mark.parametrize("reads", [False, True])
def test_the_scorer_declares_whether_it_gets_the_reference_hidden_states(tiny_model, tmp_path, reads):
    from ppo_core.modeling.loading import hidden_size_of

    config = make_config(tiny_model, tmp_path / "run", "ppo.rollout_batch_size=8", "ppo.minibatch_size=4")
    run = build_run(config, PLUGINS)
    composed = make_scorer(run.composer, run.tokenizer)
    assert composed.reads_reference_hidden is False  # letter_share is a plain Reward
    seen = []

    class Declaring:
        reads_reference_hidden = reads

        def start(self, responses, records):
            return composed.start(responses, records)

        def finish(self, handles, reference_hidden):
            seen.append(reference_hidden)
            return composed.finish(handles, reference_hidden)

    _, stats = run.engine.collect_rollout(next_prompt_batch(run), Declaring())
    assert "reward/letter_share" in stats
    if reads:
        assert seen[0].shape == (8, hidden_size_of(run.engine.reference)) and torch.isfinite(seen[0]).all()
    else:
        assert seen == [None]


def test_pad_token_is_added_when_it_equals_eos(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    from ppo_core.modeling.loading import load_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.save_pretrained(tmp_path / "tok")
    loaded = load_tokenizer(str(tmp_path / "tok"))
    assert loaded.pad_token_id is not None and loaded.pad_token_id != loaded.eos_token_id
    assert loaded.padding_side == "left"


def test_train_stops_its_reward_workers_when_it_returns_or_fails(tiny_model, tmp_path):
    """A Python caller that trains twice in one process must not collect worker processes."""
    from ppo_core.errors import TrainingError
    from ppo_core.rewards import isolation

    before = set(isolation._LIVE)
    config = make_config(tiny_model, tmp_path / "run", "train.updates=1", "ppo.rollout_batch_size=8")
    assert config.rewards[0].isolation == "process"
    train(config, extra_plugins=PLUGINS)
    assert isolation._LIVE <= before
    with pytest.raises(TrainingError, match="non-finite"):  # fails in update 1, after the workers started
        train(make_config(tiny_model, tmp_path / "run", "train.updates=1", "train.max_nonfinite_steps=1",
                          "optim.max_grad_norm=null", "ppo.vf_coef=1e300"), overwrite=True, extra_plugins=PLUGINS)
    assert isolation._LIVE <= before


def test_scoring_each_chunk_in_a_worker_while_the_next_is_sampled_changes_no_number(tiny_model, tmp_path):
    """With rewards in worker processes, each generation chunk is scored in the background while the next one is
    sampled; every logged number is the one of scoring the whole batch in process."""
    runs = {}
    for name, isolation, overlap in (("overlap", "process", "true"), ("after", "process", "false"),
                                     ("none", "none", "true")):
        config = make_config(tiny_model, tmp_path / name, "generation.batch_size=8", "train.updates=2",
                             f"rewards.0.isolation={isolation}", f"generation.score_while_sampling={overlap}")
        train(config, extra_plugins=PLUGINS)
        runs[name] = without_timing(read_metrics(tmp_path / name / "metrics.jsonl"))
    assert runs["overlap"] == runs["after"] == runs["none"] and len(runs["none"]) == 2
