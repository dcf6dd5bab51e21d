"""One sampling path: records -> encoded prompts (ppo_core.data.prompts.encode_records) -> Samples
(ppo_core.ppo.rollout.sample_prompts / generate_responses), shared by PPO rollouts, eval, reward-model training
and reward-model normalisation.

The trap this guards against: a tokenizer that adds a bos AND has a chat template whose text already starts with
one. The engine tokenizes templated text without adding special tokens (one bos); ``tokenizer(text)`` would add
a second. The reward head must be trained and normalised on the sequences the PPO rollout produces and scores.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from ppo_core.commands.train import make_scorer
from ppo_core.commands.train_reward import run_train_reward
from ppo_core.config import DataConfig, GenerationConfig, ModelConfig, OptimConfig, PPOConfig
from ppo_core.config.train_reward import TrainRewardConfig
from ppo_core.data.prompts import PromptText, encode_records, encode_texts, left_pad
from ppo_core.data.stream import take_records
from ppo_core.modeling.loading import frozen_copy, load_tokenizer
from ppo_core.modeling.tiny import BOS_ID, init_model
from ppo_core.plugin.contract import RunContext
from ppo_core.plugin.loading import load_plugins
from ppo_core.ppo.actor_critic import build_actor_critic
from ppo_core.ppo.engine import PPOEngine, PromptBatch
from ppo_core.ppo.rollout import sample_prompts
from ppo_core.reward_model import PreferencePair, read_reward_data, sample_token_ids, write_jsonl
from ppo_core.reward_model import training as reward_training

# the bos is written by the template, as in the chat templates of Llama-style models
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
TASK = {"size": 12, "eval_size": 0, "min_len": 2, "max_len": 4}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def templated_checkpoint(tmp_path_factory) -> Path:
    """The tiny char model; its tokenizer adds a bos (post-processor) and gets a chat template that writes one."""
    path = init_model(tmp_path_factory.mktemp("sampling") / "policy", "tiny", seed=0)
    tokenizer = load_tokenizer(str(path))
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tokenizer(templated_checkpoint):
    return load_tokenizer(str(templated_checkpoint))


def reverse_records(tokenizer):
    registry = load_plugins(allow=["datasets"]).registry
    return take_records(registry.build("dataset", "reverse", TASK, RunContext(tokenizer=tokenizer)), "train")


def rollout_samples(checkpoint, tokenizer, records):
    """A real PPO rollout over ``records``: the samples its scorer saw and the sequences it ran."""
    model = build_actor_critic(ModelConfig(path=str(checkpoint)), tokenizer, seed=0)
    engine = PPOEngine(model, frozen_copy(model.policy), PPOConfig(rollout_batch_size=len(records),
                                                                   minibatch_size=len(records), epochs=1),
                       GenerationConfig(max_new_tokens=4), OptimConfig(), 1, tokenizer.eos_token_id,
                       tokenizer.pad_token_id, torch.Generator().manual_seed(0))
    seen = {}

    class Recording:
        """A composer that keeps the samples it is handed and scores them all 0."""

        reads_reference_hidden = False

        def start(self, samples):
            return samples

        def finish(self, chunks, reference_hidden=None, gather=None):
            seen["samples"] = samples = [sample for chunk in chunks for sample in chunk]
            return SimpleNamespace(totals=[0.0] * len(samples), stats={})

    encoded = encode_records(records, tokenizer, DataConfig(dataset="reverse"))
    input_ids, attention_mask = left_pad([e.ids for e in encoded], tokenizer.pad_token_id)
    rollout, _stats = engine.collect_rollout(PromptBatch(input_ids, attention_mask, encoded),
                                             make_scorer(Recording(), tokenizer))
    sequences = [row[mask].tolist() for row, mask in zip(rollout.sequences, rollout.attention_mask)]
    return seen["samples"], sequences


def test_the_tokenizer_adds_a_bos_and_its_template_writes_one(tokenizer):
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert tokenizer("hi")["input_ids"][0] == BOS_ID
    assert tokenizer(text)["input_ids"][:2] == [BOS_ID, BOS_ID]  # what tokenizer(text) would have trained on
    assert tokenizer(text, add_special_tokens=False)["input_ids"][:2] != [BOS_ID, BOS_ID]


def test_reward_head_trains_and_normalises_on_the_ids_the_ppo_rollout_scores(templated_checkpoint, tokenizer,
                                                                          tmp_path, monkeypatch):
    records = reverse_records(tokenizer)
    samples, sequences = rollout_samples(templated_checkpoint, tokenizer, records)
    engine_prompt_ids = {s.prompt: list(s.prompt_ids) for s in samples}
    assert all(ids[0] == BOS_ID and ids[1] != BOS_ID for ids in engine_prompt_ids.values())
    # the reward model scores exactly the sequence the rollout ran
    assert [sample_token_ids(tokenizer, s) for s in samples] == sequences

    trained_on = []
    text_token_ids = reward_training.text_token_ids

    def recording(*args, **kwargs):
        trained_on.append(text_token_ids(*args, **kwargs))
        return trained_on[-1]

    monkeypatch.setattr(reward_training, "text_token_ids", recording)
    config = TrainRewardConfig.model_validate({
        "model": {"path": str(templated_checkpoint)},
        "data": {"dataset": "reverse", "options": TASK, "save_pairs": str(tmp_path / "pairs.jsonl")},
        "train": {"epochs": 1, "held_out_fraction": 0.25},
        "normalization": {"prompts": 6, "max_new_tokens": 4},
        "output_dir": str(tmp_path / "out"),
        "plugins": {"allow": ["datasets"]}})
    outcome = run_train_reward(config)

    pairs = outcome.data.items
    assert pairs and all(pair.templated for pair in pairs)
    assert len(trained_on) == 2 * len(pairs)
    for pair, chosen, rejected in zip(pairs, trained_on[0::2], trained_on[1::2]):
        prompt = engine_prompt_ids[pair.prompt]
        for response, ids in ((pair.chosen, chosen), (pair.rejected, rejected)):
            assert ids == prompt + tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]

    normalised_on = outcome.normalization.samples
    assert len(normalised_on) == 6
    for sample in normalised_on:
        assert list(sample.prompt_ids) == engine_prompt_ids[sample.prompt]
        assert sample_token_ids(tokenizer, sample)[:len(sample.prompt_ids)] == engine_prompt_ids[sample.prompt]

    # the saved pairs keep saying their prompts are templated, so training from the file gives the same ids
    assert read_reward_data(tmp_path / "pairs.jsonl").items == pairs


def test_pair_files_without_the_templated_flag_still_load_and_are_written_as_before(tmp_path):
    old = tmp_path / "old.jsonl"
    old.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n", encoding="utf-8")
    assert read_reward_data(old).items == [PreferencePair(prompt="p", chosen="a", rejected="b", templated=False)]
    written = write_jsonl(tmp_path / "new.jsonl", [
        PreferencePair(prompt="p", chosen="a", rejected="b"),
        PreferencePair(prompt="q", chosen="a", rejected="b", templated=True)])
    lines = [json.loads(line) for line in written.read_text(encoding="utf-8").splitlines()]
    assert lines == [{"prompt": "p", "chosen": "a", "rejected": "b"},
                     {"prompt": "q", "chosen": "a", "rejected": "b", "templated": True}]


def test_engine_eval_and_normalisation_sample_alike_whatever_the_chunking(templated_checkpoint, tokenizer):
    """The engine's generate (a batch left-padded as a whole, cut in chunks) and sample_prompts (what eval and
    normalisation call) give the same responses for the same prompts and seed, with or without chunks; a chunk
    is sampled as if it had been padded on its own."""
    model = build_actor_critic(ModelConfig(path=str(templated_checkpoint)), tokenizer, seed=0)
    encoded = encode_texts([PromptText(f"reverse: {'xyzw'[:n]} =") for n in (1, 4, 2, 3, 1, 2, 4)], tokenizer)
    whole, chunked = GenerationConfig(max_new_tokens=6), GenerationConfig(max_new_tokens=6, batch_size=3)

    def engine_rows(generation):
        engine = PPOEngine(model, frozen_copy(model.policy), PPOConfig(rollout_batch_size=8, minibatch_size=8),
                           generation, OptimConfig(), 1, tokenizer.eos_token_id, tokenizer.pad_token_id,
                           torch.Generator().manual_seed(5))
        input_ids, attention_mask = left_pad([e.ids for e in encoded], tokenizer.pad_token_id)
        responses = engine.generate(input_ids, attention_mask)
        return [(row[mask].tolist(), bool(stopped)) for row, mask, stopped in
                zip(responses.tokens, responses.mask, responses.stopped_by_eos)]

    def sampled(generation, prompts=encoded, generator=None):
        return sample_prompts(model.policy, prompts, tokenizer, generation,
                              generator or torch.Generator().manual_seed(5))

    def rows(samples):
        return [(list(s.response_ids) + ([tokenizer.eos_token_id] if s.stop_reason == "eos" else []),
                 s.stop_reason == "eos") for s in samples]

    for generation in (whole, chunked):
        samples = sampled(generation)
        assert engine_rows(generation) == rows(samples)
        assert [s.prompt_ids for s in samples] == [tuple(e.ids) for e in encoded]
    generator = torch.Generator().manual_seed(5)
    one_by_one = [s for start in range(0, len(encoded), 3)
                  for s in sampled(whole, encoded[start:start + 3], generator)]
    assert one_by_one == sampled(chunked)
