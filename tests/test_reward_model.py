"""The learned reward model: ppo_core.reward_model (data, training, normalisation, save/load, train-reward CLI).

Everything runs on tiny random GPT-2 checkpoints from :func:`ppo_core.modeling.tiny.init_model`, seeded; the
checkpoint and the trained reward model are the session fixtures of :mod:`ppo_core.testing`, shared with the tests of
the reward plugin (plugins/ppo-core-reward-model/tests).
"""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import pytest
import torch

from ppo_core import Record, Sample
from ppo_core.cli import main
from ppo_core.config.train_reward import RewardDataSection, RewardTrainOptions
from ppo_core.data.prompts import left_pad
from ppo_core.errors import DataError
from ppo_core.modeling.heads import MLPHead
from ppo_core.modeling.loading import load_backbone, load_causal_lm
from ppo_core.ppo.rollout import position_ids_from_mask
from ppo_core.reward_model import (
    PreferencePair,
    corrupt,
    load_reward_model,
    make_preference_pairs,
    normalize_on_responses,
    read_reward_data,
    sample_token_ids,
    save_reward_model,
    train_reward_model,
    write_jsonl,
)
from ppo_core.reward_model.model import right_pad
from ppo_core.reward_model.pairs import pair_kind
from ppo_core.reward_model.training import _loss, accuracy_by_kind, add_layers, with_margin
from ppo_core.reward_model.storage import (
    BACKBONE_DIR,
    REWARD_HEAD_FILE,
    REWARD_MODEL_FILE,
)
from ppo_core.testing import one_torch_thread, random_samples, toy_preference_pairs


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with one_torch_thread():
        yield


# ---- the head and the model -------------------------------------------------------------------------------


def test_head_init_and_shape():
    torch.manual_seed(0)
    head = MLPHead(256, init="normal")
    for layer in (head.dense, head.out):
        expected = 1.0 / (layer.in_features + 1) ** 0.5
        assert abs(float(layer.weight.detach().std()) - expected) < 0.1 * expected
        assert float(layer.weight.detach().mean()) == pytest.approx(0.0, abs=0.2 * expected)
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
    assert head.dense.weight.shape == (256, 256) and head.out.weight.shape == (1, 256)
    assert head(torch.zeros(3, 5, 256)).shape == (3, 5)


def test_gpt2_lm_final_hidden_state_equals_base_model_last_hidden_state(tiny_model_dir, tiny_tokenizer):
    """What the engine hands over (GPT2LMHeadModel hidden_states[-1]) is the backbone's last_hidden_state
    (ln_f applied), so a head trained on the backbone reads the reference model's states unchanged."""
    lm = load_causal_lm(str(tiny_model_dir), tokenizer=tiny_tokenizer).eval()
    base = load_backbone(str(tiny_model_dir), tokenizer=tiny_tokenizer).eval()
    input_ids, attention_mask = left_pad([tiny_tokenizer("say: xy =")["input_ids"], tiny_tokenizer("ab")["input_ids"]],
                                         tiny_tokenizer.pad_token_id)
    positions = position_ids_from_mask(attention_mask)
    with torch.no_grad():
        from_lm = lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                     output_hidden_states=True).hidden_states[-1]
        from_base = base(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).last_hidden_state
    assert torch.equal(from_lm, from_base)


def test_score_reads_the_last_real_token_with_left_or_right_padding(trained_reward_model, tiny_tokenizer):
    model = load_reward_model(trained_reward_model[0])
    rows = [sample_token_ids(tiny_tokenizer, s) for s in random_samples(tiny_tokenizer, 6)]
    right_ids, right_mask = right_pad(rows, tiny_tokenizer.pad_token_id)
    left_ids, left_mask = left_pad(rows, tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        right = model.score(right_ids, right_mask)
        left = model.score(left_ids, left_mask)
        alone = torch.cat([model.score(torch.tensor([row]), torch.ones(1, len(row), dtype=torch.long)) for row in rows])
    assert right.shape == (6,)
    torch.testing.assert_close(left, right, rtol=0, atol=1e-5)
    torch.testing.assert_close(alone, right, rtol=0, atol=1e-5)


def test_sample_token_ids_prefer_the_engines_prompt_ids_when_a_sample_carries_them(tiny_tokenizer):
    from types import SimpleNamespace

    sample = SimpleNamespace(prompt="ignored", prompt_ids=(1, 80, 81), response="ab", response_ids=(69, 70),
                             stop_reason="eos")
    assert sample_token_ids(tiny_tokenizer, sample) == [1, 80, 81, 69, 70, tiny_tokenizer.eos_token_id]
    # another vocabulary: the response is re-tokenized from its text, the prompt from its text
    assert sample_token_ids(tiny_tokenizer, sample, same_vocab=False) == (
        tiny_tokenizer("ignored")["input_ids"] + tiny_tokenizer("ab", add_special_tokens=False)["input_ids"] + [2])


def test_sample_token_ids_are_the_engines(tiny_tokenizer):
    stopped = Sample(prompt="say: x =", response="ab", response_ids=(69, 70), solution=None, stop_reason="eos")
    cut = Sample(prompt="say: x =", response="ab", response_ids=(69, 70), solution=None, stop_reason="length")
    prompt = tiny_tokenizer("say: x =")["input_ids"]
    assert prompt[0] == tiny_tokenizer.bos_token_id
    assert sample_token_ids(tiny_tokenizer, stopped) == prompt + [69, 70, tiny_tokenizer.eos_token_id]
    assert sample_token_ids(tiny_tokenizer, cut) == prompt + [69, 70]


# ---- training ---------------------------------------------------------------------------------------------


def test_preference_pairs_reach_high_held_out_accuracy_on_a_frozen_backbone(trained_reward_model):
    metrics = trained_reward_model[1].metrics
    assert metrics["kind"] == "pairs" and metrics["held_out_size"] + metrics["train_size"] == 160
    assert 40 <= metrics["held_out_size"] <= 48  # a quarter, rounded up to whole prompts
    assert metrics["held_out_accuracy"] >= 0.95, metrics
    assert metrics["train_accuracy"] >= 0.95, metrics
    history = trained_reward_model[1].history
    assert len(history) == 30 and history[-1]["loss"] < history[0]["loss"]


def test_training_the_backbone_too(tiny_model_dir, tmp_path):
    result = train_reward_model(str(tiny_model_dir), toy_preference_pairs(64, seed=1),
                                RewardTrainOptions(train_backbone=True, epochs=3, lr=1e-3, batch_size=16,
                                                   held_out_fraction=0.25, seed=1))
    assert result.metrics["held_out_accuracy"] >= 0.95, result.metrics
    model = result.model
    assert not model.backbone_frozen and all(p.requires_grad for p in model.backbone.parameters())
    directory = save_reward_model(model, tmp_path / "rm")
    info = json.loads((directory / REWARD_MODEL_FILE).read_text())
    assert info["backbone"] == {"path": BACKBONE_DIR, "frozen": False} and info["tokenizer"] == BACKBONE_DIR
    assert (directory / BACKBONE_DIR / "model.safetensors").is_file()
    reloaded = load_reward_model(directory)
    rows = [[1, 40, 40, 2], [1, 41, 41, 41, 2], [1, 69]]
    model.eval()
    assert torch.equal(model.score_ids(rows), reloaded.score_ids(rows))


def test_mean_pool_saves_reloads_and_ignores_padding(tiny_model_dir, tiny_tokenizer, trained_reward_model, tmp_path):
    result = train_reward_model(str(tiny_model_dir), toy_preference_pairs(16, seed=2),
                                RewardTrainOptions(epochs=1, batch_size=8, seed=2, pool="mean"))
    model = result.model
    directory = save_reward_model(model, tmp_path / "rm")
    assert json.loads((directory / REWARD_MODEL_FILE).read_text())["pool"] == "mean"
    reloaded = load_reward_model(directory)
    assert reloaded.pool == "mean"
    rows = [sample_token_ids(tiny_tokenizer, s) for s in random_samples(tiny_tokenizer, 4)]
    assert torch.equal(model.score_ids(rows), reloaded.score_ids(rows))
    left_ids, left_mask = left_pad(rows, tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.score(left_ids, left_mask), reloaded.score_ids(rows), rtol=0, atol=1e-5)
        # the head reads the mean over the real tokens, by hand
        states = reloaded.backbone(input_ids=torch.tensor([rows[0]])).last_hidden_state
        torch.testing.assert_close(reloaded.score_ids(rows[:1]), reloaded.score_hidden(states.mean(1)))
    # a directory written before the option existed reads the last token
    assert "pool" not in json.loads((trained_reward_model[0] / REWARD_MODEL_FILE).read_text()) or \
        load_reward_model(trained_reward_model[0]).pool == "last"
    old = json.loads((directory / REWARD_MODEL_FILE).read_text())
    del old["pool"]
    (directory / REWARD_MODEL_FILE).write_text(json.dumps(old))
    assert load_reward_model(directory).pool == "last"


def test_sum_pool_adds_every_tokens_score(tiny_model_dir, tiny_tokenizer, tmp_path):
    result = train_reward_model(str(tiny_model_dir), toy_preference_pairs(16, seed=3),
                                RewardTrainOptions(epochs=1, batch_size=8, seed=3, pool="sum"))
    model = load_reward_model(save_reward_model(result.model, tmp_path / "rm"))
    assert model.pool == "sum" and model.backbone_frozen
    rows = [sample_token_ids(tiny_tokenizer, s) for s in random_samples(tiny_tokenizer, 3)]
    with torch.no_grad():
        by_hand = torch.stack([model.head(model.backbone(input_ids=torch.tensor([row])).last_hidden_state[0]).sum()
                               for row in rows])
        torch.testing.assert_close(model.score_ids(rows, normalize=False), by_hand, rtol=0, atol=1e-5)
        left_ids, left_mask = left_pad(rows, tiny_tokenizer.pad_token_id)
        torch.testing.assert_close(model.score(left_ids, left_mask), model.score_ids(rows), rtol=0, atol=1e-5)


def test_accuracy_by_kind_and_the_margin_by_hand():
    rewards = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [3.0, 1.0], [0.0, 5.0]])
    kinds = ["substitution", "substitution", "order", "length", "other"]
    assert accuracy_by_kind(rewards, kinds) == {"substitution": 0.5, "order": 0.5, "length": 1.0, "other": 0.0}
    assert accuracy_by_kind(rewards[:1], kinds[:1]) == {"substitution": 1.0, "order": None, "length": None}
    pairs = torch.tensor([[1.0, 0.0]])
    assert float(_loss(pairs, torch.zeros(1), "pairs")) == pytest.approx(-math.log(1 / (1 + math.exp(-1))))
    # margin 1: the pair 1 apart counts as no margin at all, log 2
    assert float(_loss(with_margin(pairs, 1.0), torch.zeros(1), "pairs")) == pytest.approx(math.log(2))


def test_top_layers_train_and_the_rest_stays(tiny_model_dir):
    from ppo_core.modeling.loading import load_backbone

    start = load_backbone(str(tiny_model_dir)).state_dict()
    result = train_reward_model(str(tiny_model_dir), toy_preference_pairs(32, seed=1),
                                RewardTrainOptions(train_backbone=True, backbone_layers=1, epochs=1, lr=1e-2,
                                                   batch_size=16, seed=1))
    trained = result.model.backbone.state_dict()
    top = f"h.{len(result.model.backbone.h) - 1}."
    for name, value in trained.items():
        if not name.startswith((top, "ln_f.")):
            assert torch.equal(value, start[name]), name  # the embeddings and the lower blocks stay
    assert any(not torch.equal(v, start[n]) for n, v in trained.items() if n.startswith(top))


def test_added_layers_start_as_the_identity_and_save_with_the_backbone(tiny_model_dir, tmp_path):
    from ppo_core.reward_model import build_reward_model

    model = build_reward_model(str(tiny_model_dir), frozen=False).eval()
    rows = [[1, 40, 41, 42, 2], [1, 43, 2]]
    before = model.score_ids(rows)
    layers = len(model.backbone.h)
    add_layers(model.backbone, 2)
    assert len(model.backbone.h) == model.backbone.config.n_layer == layers + 2
    torch.testing.assert_close(model.score_ids(rows), before, rtol=0, atol=1e-6)
    result = train_reward_model(str(tiny_model_dir), toy_preference_pairs(32, seed=1),
                                RewardTrainOptions(train_backbone=True, added_layers=2, epochs=1, batch_size=16))
    reloaded = load_reward_model(save_reward_model(result.model, tmp_path / "rm"))
    assert len(reloaded.backbone.h) == layers + 2
    assert torch.equal(reloaded.score_ids(rows), result.model.score_ids(rows))


def test_scalar_labels_train_with_mse(tiny_model_dir):
    rng = random.Random(2)
    rows = []
    for _ in range(120):
        good = rng.random() < 0.5
        rows.append({"prompt": "rate:", "response": ("a" if good else "b") * rng.randint(1, 6),
                     "score": 1.0 if good else -1.0})
    result = train_reward_model(str(tiny_model_dir), rows,
                                RewardTrainOptions(epochs=20, lr=3e-3, held_out_fraction=0.25))
    metrics = result.metrics
    assert metrics["kind"] == "labels"
    assert metrics["held_out_mse"] < 0.2, metrics
    assert metrics["held_out_accuracy"] >= 0.95, metrics


def test_held_out_split_keeps_a_prompts_items_together():
    from ppo_core.reward_model.training import _split

    prompts = [f"p{i // 3}" for i in range(30)]  # ten prompts, three pairs each
    held, train = _split(prompts, 0.2, torch.Generator().manual_seed(0))
    assert len(held) == 6 and sorted(held + train) == list(range(30))
    assert not {prompts[i] for i in held} & {prompts[i] for i in train}
    held, train = _split(["same"] * 10, 0.2, torch.Generator().manual_seed(0))  # one prompt: item by item
    assert len(held) == 2 and len(train) == 8
    assert _split(["a", "b"], 0.0, torch.Generator())[0] == []


def test_training_is_deterministic(tiny_model_dir):
    options = RewardTrainOptions(epochs=2, held_out_fraction=0.2, seed=5)
    first = train_reward_model(str(tiny_model_dir), toy_preference_pairs(40), options)
    second = train_reward_model(str(tiny_model_dir), toy_preference_pairs(40), options)
    for a, b in zip(first.model.head.parameters(), second.model.head.parameters()):
        assert torch.equal(a, b)
    assert first.metrics == second.metrics


# ---- save and load ----------------------------------------------------------------------------------------


def test_saved_reward_model_reloads_with_bit_identical_scores(trained_reward_model, tiny_model_dir, tiny_tokenizer):
    directory, result, normalization = trained_reward_model
    assert sorted(p.name for p in directory.iterdir()) == [REWARD_HEAD_FILE, REWARD_MODEL_FILE]  # no pickle
    info = json.loads((directory / REWARD_MODEL_FILE).read_text())
    assert info["backbone"] == {"path": str(tiny_model_dir.resolve()), "frozen": True}
    assert info["tokenizer"] == str(tiny_model_dir.resolve())
    assert info["hidden_size"] == 64 and info["head_hidden"] == 64
    assert (info["gain"], info["bias"]) == (normalization.gain, normalization.bias)
    assert info["training"]["metrics"]["held_out_accuracy"] == result.metrics["held_out_accuracy"]
    reloaded = load_reward_model(directory)
    assert (reloaded.gain, reloaded.bias) == (result.model.gain, result.model.bias)
    rows = [sample_token_ids(tiny_tokenizer, s) for s in random_samples(tiny_tokenizer)]
    for normalize in (True, False):
        assert torch.equal(result.model.score_ids(rows, normalize=normalize),
                           reloaded.score_ids(rows, normalize=normalize))


def test_save_is_atomic_and_replaces(trained_reward_model, tmp_path):
    model = load_reward_model(trained_reward_model[0])
    target = tmp_path / "out"
    save_reward_model(model, target)
    model.bias += 1.0
    save_reward_model(model, target)
    assert json.loads((target / REWARD_MODEL_FILE).read_text())["bias"] == model.bias
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no .partial- or .old- left behind


# ---- normalisation ----------------------------------------------------------------------------------------


def test_normalisation_on_given_responses(trained_reward_model):
    model = load_reward_model(trained_reward_model[0])
    prompts = [f"say: {w} =" for w in ("x", "yy", "zxz", "y", "zz", "xyzx")]
    responses = ["a", "bb", "ab", "aaa", "bab", "q"]
    normalization = normalize_on_responses(model, prompts, responses)
    rows = [sample_token_ids(model.tokenizer, s) for s in normalization.samples]
    scores = model.score_ids(rows).double()
    assert abs(float(scores.mean())) < 1e-4 and float(scores.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)


# ---- data -------------------------------------------------------------------------------------------------


def test_reward_data_from_jsonl(tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [PreferencePair(prompt="p", chosen="a", rejected="b"),
                                                   {"prompt": "q", "chosen": "c", "rejected": "d"}])
    data = read_reward_data(pairs)
    assert data.kind == "pairs" and [p.chosen for p in data.items] == ["a", "c"] and data.prompts == ["p", "q"]
    labels = tmp_path / "labels.jsonl"
    labels.write_text('{"prompt": "p", "response": "a", "score": 1}\n\n{"prompt": "p", "response": "b", "score": -0.5}\n')
    data = read_reward_data(labels)
    assert data.kind == "labels" and [s.score for s in data.items] == [1.0, -0.5] and data.prompts == ["p"]


@pytest.mark.parametrize("lines, kind, message", [
    (['{"prompt": "p", "chosen": "a", "rejected": "b"}', '{"prompt": "p", "chosen": "a"}'], "auto",
     "line 2: rejected: Field required"),
    (['{"prompt": "p", "chosen": "a", "rejected": "b"}', "", '{"prompt": 1, "chosen": "a", "rejected": "b"}'], "auto",
     "line 3: prompt: Input should be a valid string"),
    (['{"prompt": "p", "chosen": "a", "rejected": "b"', ], "auto", "line 1: not valid JSON"),
    (['["p", "a", "b"]'], "auto", "line 1: expected a JSON object, got list"),
    (['{"prompt": "p", "text": "a"}'], "auto", "line 1: cannot tell preference pairs"),
    (['{"prompt": "p", "response": "a", "score": 1}', '{"prompt": "p", "chosen": "a", "rejected": "b"}'], "auto",
     "line 2: a preference pair in a file of labels (line 1 decided the kind"),
    (['{"prompt": "p", "response": "a", "score": NaN}'], "auto", "line 1: score: Input should be a finite number"),
    (['{"prompt": "p", "response": "a", "score": 1}'], "pairs", "line 1: chosen: Field required"),
    ([], "auto", "no records"),
])
def test_bad_reward_data_names_file_line_and_field(tmp_path, lines, kind, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    with pytest.raises(DataError) as info:
        read_reward_data(path, kind)
    assert str(info.value).startswith(str(path)) and message in str(info.value)


def test_missing_data_file(tmp_path):
    with pytest.raises(DataError, match="cannot read reward data"):
        read_reward_data(tmp_path / "nope.jsonl")


def test_a_corruption_named_twice_is_drawn_twice_as_often():
    rng = random.Random(0)
    kinds = [pair_kind("abcd", corrupt("abcd", rng, ["substitute", "substitute", "swap"])) for _ in range(3000)]
    assert 0.62 < kinds.count("substitution") / len(kinds) < 0.71 and set(kinds) == {"substitution", "order"}
    # a repeated kind that cannot change the text is dropped with all its copies
    assert corrupt("a", rng, ["shuffle", "shuffle", "substitute"]) not in (None, "a")
    assert corrupt("a", rng, ["shuffle", "shuffle"]) is None


def test_truncate_keeps_the_first_letters_and_double_makes_two_edits():
    rng = random.Random(0)
    truncated = {corrupt("dcba", rng, ["truncate"]) for _ in range(100)}
    assert truncated == {"d", "dc", "dcb"} and corrupt("a", rng, ["truncate"]) is None
    doubled = [corrupt("dcba", rng, ["double"]) for _ in range(200)]
    assert all(d not in (None, "dcba") for d in doubled) and {pair_kind("dcba", d) for d in doubled} > {"length"}
    assert any(len(d) == 2 for d in doubled) and any(len(d) == 6 for d in doubled)  # two deletions, two insertions
    # neither is in the default set, which the demo's reward model was trained with
    assert RewardDataSection(dataset="reverse").corruptions == ["substitute", "delete", "shuffle", "insert", "swap"]


def test_make_preference_pairs_is_deterministic_and_corrupts(tmp_path):
    records = [Record.from_dict({"prompt": f"reverse: {w} =", "solution": w[::-1]})
               for w in ("abc", "hello", "zz", "qwerty", "ab", "mississippi")]
    first = make_preference_pairs(records, random.Random(7), pairs_per_record=3)
    assert first == make_preference_pairs(records, 7, pairs_per_record=3)
    assert first != make_preference_pairs(records, 8, pairs_per_record=3)
    assert len(first) == 18
    for pair, record in zip(first, [r for r in records for _ in range(3)]):
        assert pair.prompt == record.prompt_text and pair.chosen == record.solution
        assert pair.rejected not in ("", pair.chosen)
    rng = random.Random(0)
    for _ in range(50):
        deleted = corrupt("abcdef", rng, ["delete"])
        assert len(deleted) == 5 and all(c in "abcdef" for c in deleted)
        shuffled = corrupt("abcdef", rng, ["shuffle"])
        assert sorted(shuffled) == list("abcdef") and shuffled != "abcdef"
        substituted = corrupt("abcdef", rng, ["substitute"])
        assert len(substituted) == 6 and sum(a != b for a, b in zip(substituted, "abcdef")) == 1
        inserted = corrupt("abcdef", rng, ["insert"])
        assert len(inserted) == 7 and any(inserted[:i] + inserted[i + 1:] == "abcdef" for i in range(7))
        swapped = corrupt("abcdef", rng, ["swap"])
        i = next(i for i in range(6) if swapped[i] != "abcdef"[i])
        assert swapped == "abcdef"[:i] + "abcdef"[i + 1] + "abcdef"[i] + "abcdef"[i + 2:]
        assert pair_kind("abcdef", substituted) == "substitution" and pair_kind("abcdef", inserted) == "length"
        assert pair_kind("abcdef", deleted) == "length" and pair_kind("abcdef", swapped) == "order"
        assert pair_kind("abcdef", shuffled) == "order"
    assert pair_kind("abc", "xyz") == "other" and pair_kind("ab", "ba") == "order"
    assert corrupt("a", rng, ["shuffle", "delete"]) is None
    assert corrupt("zz", rng, ["shuffle", "substitute"]) not in (None, "zz")  # shuffle impossible, substitute works
    # a list of accepted solutions: the first is chosen, none of them is ever rejected
    pairs = make_preference_pairs([{"prompt": "p", "solution": ["ab", "ba"]}], 0, ["shuffle", "delete"], 4)
    assert pairs[0].chosen == "ab" and {p.rejected for p in pairs} <= {"a", "b"}
    with pytest.raises(DataError, match="no corruption in shuffle"):
        make_preference_pairs([{"prompt": "p", "solution": ["ab", "ba"]}], 0, ["shuffle"])
    with pytest.raises(DataError, match="has no solution"):
        make_preference_pairs([{"prompt": "p"}], 0)
    path = write_jsonl(tmp_path / "pairs.jsonl", first)
    assert read_reward_data(path).items == first


# ---- ppo-core train-reward --------------------------------------------------------------------------------


def write_config(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_train_reward_cli_from_a_dataset(tiny_model_dir, tmp_path, capsys):
    config = write_config(tmp_path / "rm.yaml", f"""
model:
  path: {tiny_model_dir}
data:
  dataset: reverse
  options: {{size: 64, eval_size: 0}}
  save_pairs: {tmp_path / "pairs.jsonl"}
train:
  epochs: 2
  held_out_fraction: 0.25
normalization:
  prompts: 8
  max_new_tokens: 4
output_dir: {tmp_path / "out"}
""")
    assert main(["train-reward", str(config)]) == 0
    out = capsys.readouterr().out
    assert "epoch 2/2: loss" in out
    assert "data: 48 preference pairs for training, 16 held out (dataset reverse (train split))" in out
    assert "held-out pair accuracy: " in out and "normalisation: gain " in out
    assert re.search(r"held-out pair accuracy: [0-9.]+ \(substitution [0-9.]+, order [0-9.]+, length [0-9.]+\)", out)
    assert f"saved reward model: {tmp_path / 'out'}" in out
    info = json.loads((tmp_path / "out" / REWARD_MODEL_FILE).read_text())
    assert info["normalization"]["count"] == 8 and info["backbone"]["frozen"]
    pairs = read_reward_data(tmp_path / "pairs.jsonl").items
    assert len(pairs) == 64 and pairs[0].prompt.startswith("reverse: ")
    # the directory exists now: a second run needs --overwrite
    assert main(["train-reward", str(config)]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert main(["train-reward", str(config), "--overwrite", "--set", "train.epochs=1",
                 "--set", "normalization.enabled=false"]) == 0
    assert json.loads((tmp_path / "out" / REWARD_MODEL_FILE).read_text())["gain"] == 1.0


def test_train_reward_cli_from_labels_normalised_on_the_data(tiny_model_dir, tmp_path, capsys):
    labels = write_jsonl(tmp_path / "labels.jsonl", [
        {"prompt": "rate:", "response": c * n, "score": 1.0 if c == "a" else 0.0} for c in "ab" for n in range(1, 9)])
    config = write_config(tmp_path / "rm.json", json.dumps({
        "model": {"path": str(tiny_model_dir)}, "data": {"path": str(labels)},
        "train": {"epochs": 3, "held_out_fraction": 0.25}, "normalization": {"source": "data"},
        "output_dir": str(tmp_path / "out")}))
    assert main(["train-reward", str(config)]) == 0
    out = capsys.readouterr().out
    assert "data: 12 labelled responses for training, 4 held out" in out and "held-out MSE: " in out
    model = load_reward_model(tmp_path / "out")
    rows = [sample_token_ids(model.tokenizer, s) for s in
            [Sample(prompt="rate:", response=c * n, response_ids=tuple(model.tokenizer(c * n, add_special_tokens=False)
                    ["input_ids"]), solution=None, stop_reason="eos") for c in "ab" for n in range(1, 9)]]
    scores = model.score_ids(rows).double()
    assert abs(float(scores.mean())) < 1e-4 and float(scores.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("text, message", [
    ("model: {path: P}\ndata: {path: d.jsonl, dataset: reverse}\n", "data: Value error, give exactly one of `path`"),
    ("model: {path: P}\ndata: {}\n", "data: Value error, give exactly one of `path`"),
    ("model: {path: P}\ndata: {path: d.jsonl}\ntrain: {epoch: 3}\n", "train.epoch: Extra inputs are not permitted"),
    ("model: {path: P}\ndata: {path: d.jsonl}\ntrain: {held_out_fraction: 1}\n",
     "train.held_out_fraction: Input should be less than 1"),
    ("data: {path: d.jsonl}\n", "model: Field required"),
    ("model: {path: P}\ndata: {path: d.jsonl, options: {size: 3}}\n", "options only apply with `dataset`"),
    ("model: {path: P}\ndata: {dataset: reverse, corruptions: [rot13]}\n", "data.corruptions.0: Input should be"),
    ("model: {path: P}\ndata: {path: missing.jsonl}\noutput_dir: OUT\n", "missing.jsonl: cannot read reward data"),
    ("model: {path: P}\ndata: {dataset: nope}\noutput_dir: OUT\n", "unknown dataset 'nope'"),
])
def test_train_reward_cli_user_errors_exit_2(tiny_model_dir, tmp_path, capsys, text, message):
    text = text.replace("P", str(tiny_model_dir)).replace("OUT", str(tmp_path / "out"))
    text = text.replace("missing.jsonl", str(tmp_path / "missing.jsonl"))
    config = write_config(tmp_path / "bad.yaml", text)
    assert main(["train-reward", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ppo-core: error: ") and message in err, err
    if "Field required" in message or "Extra" in message:
        assert str(config) in err
    assert not (tmp_path / "out").exists()


def test_train_reward_cli_bad_set_override(tiny_model_dir, tmp_path, capsys):
    config = write_config(tmp_path / "rm.yaml", f"model: {{path: {tiny_model_dir}}}\ndata: {{path: x.jsonl}}\n")
    assert main(["train-reward", str(config), "--set", "train.lr=-1"]) == 2
    err = capsys.readouterr().err
    assert "(with --set train.lr=-1)" in err and "train.lr: Input should be greater than 0" in err


