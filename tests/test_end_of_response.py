"""Several eos ids end a response: the tokenizer's eos and every id of the model's generation config
(``eos_token_id: [a, b]``); sampling stops at either, and the response mask and the rewards see that end."""

from __future__ import annotations

import json
from collections import Counter

import torch

from ppo_core.commands.train import build_run, next_prompt_batch
from ppo_core.config import load_config
from ppo_core.modeling.loading import end_of_response_ids, load_causal_lm, load_tokenizer
from ppo_core.modeling.tiny import EOS_ID, init_model
from ppo_core.ppo.rollout import sample_responses
from ppo_core.testing import one_torch_thread


def sample(policy, input_ids, attention_mask, eos_ids):
    return sample_responses(policy, input_ids, attention_mask, 12, eos_ids, pad_token_id=0,
                            generator=torch.Generator().manual_seed(5))


class RecordingScorer:
    """Scores 0 and keeps the stop reasons and response ids the rewards would see."""

    reads_reference_hidden = False

    def __init__(self, tokenizer):
        self.tokenizer, self.samples = tokenizer, []

    def start(self, responses, records):
        from ppo_core.data.prompts import make_samples

        self.samples += make_samples(records, responses.tokens, responses.mask, responses.stopped_by_eos,
                                     self.tokenizer)

    def finish(self, handles, reference_hidden):
        return torch.zeros(len(self.samples)), {}


def test_sampling_stops_at_either_eos_id_of_the_generation_config(tmp_path):
    model_dir = init_model(tmp_path / "model", size="tiny", seed=0)
    tokenizer = load_tokenizer(str(model_dir))
    with one_torch_thread():
        policy = load_causal_lm(str(model_dir), tokenizer=tokenizer).eval()
        input_ids = torch.randint(4, 99, (16, 5), generator=torch.Generator().manual_seed(0))
        attention_mask = torch.ones_like(input_ids)
        plain = sample(policy, input_ids, attention_mask, EOS_ID)
        # the second eos: the token the plain sampler draws most often before any eos
        drawn = Counter(int(t) for row, mask in zip(plain.tokens, plain.mask) for t in row[mask] if t != EOS_ID)
        second = drawn.most_common(1)[0][0]
        config_file = model_dir / "generation_config.json"
        config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "eos_token_id": [EOS_ID, second]}))
        policy = load_causal_lm(str(model_dir), tokenizer=tokenizer).eval()
        assert end_of_response_ids(tokenizer, policy) == (EOS_ID, second)
        both = sample(policy, input_ids, attention_mask, end_of_response_ids(tokenizer, policy))
    stops_at_second = 0
    for row in range(input_ids.size(0)):
        tokens = plain.tokens[row][plain.mask[row]].tolist()
        ends = [i for i, t in enumerate(tokens) if t in (EOS_ID, second)]
        kept = tokens[:ends[0] + 1] if ends else tokens  # the same draws, cut at the first of either id
        assert both.tokens[row][both.mask[row]].tolist() == kept
        assert bool(both.stopped_by_eos[row]) == bool(ends)
        stops_at_second += bool(ends) and tokens[ends[0]] == second
    assert stops_at_second >= 2  # the second id did end responses

    # a PPO rollout reads both ids from the generation config; the rewards see each response without its end
    config = load_config(None, [], base={
        "model": {"path": str(model_dir), "device": "cpu"}, "data": {"dataset": "reverse", "options": {"size": 32}},
        "rewards": [{"name": "edit_distance"}], "ppo": {"rollout_batch_size": 16, "minibatch_size": 16},
        "generation": {"max_new_tokens": 12}, "plugins": {"allow": ["rule_rewards", "datasets"]},
        "train": {"output_dir": str(tmp_path / "run"), "progress": "none", "threads": 1}})
    run = build_run(config)
    with run.composer:
        assert run.engine.eos_token_id == (EOS_ID, second)
        scorer = RecordingScorer(run.tokenizer)
        rollout, stats = run.engine.collect_rollout(next_prompt_batch(run), scorer)
    responses = rollout.sequences[:, rollout.prompt_length:]
    for row, sampled in enumerate(scorer.samples):
        length = int(rollout.response_mask[row].sum())
        last = int(responses[row, length - 1])
        assert (sampled.stop_reason == "eos") == (last in (EOS_ID, second))
        assert all(t not in (EOS_ID, second) for t in responses[row, :length - 1].tolist())  # no earlier end
        assert list(sampled.response_ids) == responses[row, :length - (sampled.stop_reason == "eos")].tolist()
    assert any(s.stop_reason == "eos" and int(responses[i, int(rollout.response_mask[i].sum()) - 1]) == second
               for i, s in enumerate(scorer.samples))
