"""Datasets in the shapes users have (TRL's conversational ``prompt`` and ``messages`` columns) and prompts longer
than ``data.max_prompt_tokens``: truncated keeping the system turn, left out, or an error; counted and announced
once (ppo_core.data.prompts, ppo_core.data.stream)."""

from __future__ import annotations

import json

import pytest

from ppo_core.config import DataConfig
from ppo_core.data.prompts import LongPrompts, encode_records, long_prompt_stats
from ppo_core.data.stream import PromptStream
from ppo_core.errors import DataError
from ppo_core.modeling.tiny import build_char_tokenizer
from ppo_core.plugin.contract import Dataset, Record
from ppo_core.testing import train_tiny_run

# one line per turn, so the kept text is easy to read: <role>content\n ... <assistant>
TEMPLATE = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")
SYSTEM = {"role": "system", "content": "Be brief."}


@pytest.fixture(scope="module")
def plain():
    return build_char_tokenizer()  # one token per character and a leading <bos>; no chat template


@pytest.fixture(scope="module")
def templated():
    tokenizer = build_char_tokenizer()
    tokenizer.chat_template = TEMPLATE
    return tokenizer


def data(**fields) -> DataConfig:
    return DataConfig(dataset="test", **fields)


def record(*turns: tuple[str, str], **extra) -> Record:
    return Record.from_dict({"messages": [{"role": role, "content": content} for role, content in turns], **extra})


def test_trl_conversational_prompt_is_read_as_the_chat_form():
    turns = [SYSTEM, {"role": "user", "content": "hi"}]
    got = Record.from_dict({"prompt": turns, "solution": "ih", "difficulty": 2})
    assert [m.model_dump() for m in got.messages] == turns
    assert got.solution == "ih" and got.fields == {"difficulty": 2}


def test_a_final_assistant_turn_is_the_solution():
    got = Record.from_dict({"messages": [SYSTEM, {"role": "user", "content": "hi"},
                                         {"role": "assistant", "content": "ih"}], "id": 7})
    assert [m.role for m in got.messages] == ["system", "user"] and got.solution == "ih" and got.fields == {"id": 7}
    # an explicit solution wins and leaves the conversation as written; a lone assistant turn is the prompt itself
    explicit = Record.from_dict({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
                                 "solution": "c"})
    assert [m.role for m in explicit.messages] == ["user", "assistant"] and explicit.solution == "c"
    lone = Record.from_dict({"messages": [{"role": "assistant", "content": "b"}]})
    assert len(lone.messages) == 1 and lone.solution is None


def test_a_prompt_that_fits_is_untouched(plain, templated):
    for tokenizer in (plain, templated):
        [got] = encode_records([record(("user", "abc"))], tokenizer, data(max_prompt_tokens=64))
        assert not got.truncated and len(got.ids) < 64


def test_truncation_without_a_chat_template_keeps_the_system_turn_and_cuts_the_user_turn_from_its_start(plain):
    long = record(("system", "Be brief."), ("user", "0123456789abcdefghij"))
    warnings: list[str] = []
    counts = LongPrompts(warn=warnings.append)
    [got] = encode_records([long], plain, data(max_prompt_tokens=25), counts)
    # <bos> + "Be brief.\n" (10) + the user turn's last 14 characters = 25 tokens
    assert got.text == "Be brief.\n6789abcdefghij" and len(got.ids) == 25 and got.truncated
    assert [m.content for m in got.record.messages] == ["Be brief.", "6789abcdefghij"]
    assert counts.truncated == 1 and len(warnings) == 1 and "longer than 25 tokens" in warnings[0]


def test_truncation_with_a_chat_template_keeps_the_system_turn_and_every_turn_marker(templated):
    long = record(("system", "Be brief."), ("user", "0123456789abcdefghij"))
    [got] = encode_records([long], templated, data(max_prompt_tokens=40), LongPrompts(warn=lambda line: None))
    assert got.text == "<system>Be brief.\n<user>ghij\n<assistant>" and len(got.ids) == 40


def test_when_the_first_user_turn_leaves_no_room_the_cut_goes_on_into_the_next_turn(templated):
    long = record(("system", "S"), ("user", "first question"), ("assistant", "first answer"), ("user", "then this"),
                  solution="x")
    # even emptied, the first user turn leaves 68 tokens: it goes, and the assistant turn keeps its last 6 characters
    [got] = encode_records([long], templated, data(max_prompt_tokens=55), LongPrompts(warn=lambda line: None))
    assert got.text == "<system>S\n<assistant>answer\n<user>then this\n<assistant>" and len(got.ids) == 55


def test_a_system_turn_that_alone_does_not_fit_is_an_error_naming_the_fix(templated):
    long = record(("system", "a very long system prompt"), ("user", "q"))
    with pytest.raises(DataError, match="system turn.*data.max_prompt_tokens or set data.long_prompts: skip"):
        encode_records([long], templated, data(max_prompt_tokens=20), LongPrompts(warn=lambda line: None))


def test_error_mode_stops_and_reject_still_means_error(plain):
    assert data(long_prompts="reject").long_prompts == "error"
    with pytest.raises(DataError, match="has 21 tokens, more than 8"):
        encode_records([record(("user", "0123456789abcdefghij"))], plain, data(max_prompt_tokens=8,
                                                                              long_prompts="error"))


class Listed(Dataset):
    name = "listed"

    def __init__(self, records):
        super().__init__(None)
        self.listed = records

    def records(self, split):
        return iter(self.listed)


def test_skip_draws_the_next_record_and_the_batch_says_how_many_it_skipped(plain):
    records = [record(("user", text)) for text in ("short", "far too long a prompt", "ok", "also far too long!")]
    stream = PromptStream(Listed(records), "train", seed=0, shuffle=False)
    warnings: list[str] = []
    stream.long_prompts.warn = warnings.append
    config = data(max_prompt_tokens=10, long_prompts="skip")
    first = stream.take_prompts(2, plain, config)
    second = stream.take_prompts(2, plain, config)
    assert [p.text for p in first] == ["short", "ok"] and [p.text for p in second] == ["short", "ok"]
    assert long_prompt_stats(first) == {"data/truncated_prompts": 0.0, "data/skipped_prompts": 1.0}
    assert long_prompt_stats(second) == {"data/truncated_prompts": 0.0, "data/skipped_prompts": 2.0}
    assert stream.long_prompts.skipped == 3 and len(warnings) == 1 and "are skipped" in warnings[0]


def test_skip_with_every_prompt_too_long_is_an_error_not_an_endless_loop(plain):
    stream = PromptStream(Listed([record(("user", "far too long a prompt"))]), "train", seed=0, shuffle=False)
    stream.long_prompts.warn = lambda line: None
    with pytest.raises(DataError, match="every prompt of the train split is longer"):
        stream.take_prompts(1, plain, data(max_prompt_tokens=10, long_prompts="skip"))


def test_ppo_train_reads_trl_shaped_jsonl_counts_truncations_and_warns_once(tmp_path, tiny_model_dir):
    """A real `ppo-core train` on TRL-shaped records (conversational prompt, messages ending with the answer)."""
    rows = []
    for i, word in enumerate(["abcd", "hello", "xyz", "pqrs"]):
        turns = [SYSTEM, {"role": "user", "content": f"reverse: {word * (1 + 3 * (i % 2))} ="}]
        rows.append({"prompt": turns, "solution": word[::-1]} if i < 2
                    else {"messages": [*turns, {"role": "assistant", "content": word[::-1]}]})
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    data = {"dataset": "jsonl", "options": {"path": str(tmp_path / "data.jsonl")}, "max_prompt_tokens": 28}
    metrics, stderr = train_tiny_run(tiny_model_dir, tmp_path, data, [{"name": "edit_distance"}])
    # "Be brief.\nreverse: hellohellohellohello =" has 1 + 41 tokens: the two long records of each pass are cut
    assert [line["data/truncated_prompts"] for line in metrics] == [2, 2]
    assert stderr.count("data.max_prompt_tokens: prompts longer than 28 tokens are truncated") == 1


def test_the_fewest_tokens_cut_are_found_whatever_the_first_guess():
    from ppo_core.data.prompts import _fewest

    for count in range(1, 12):
        for answer in range(count):
            for guess in range(count + 2):
                calls: list[int] = []

                def fits(k: int) -> bool:
                    calls.append(k)
                    return k >= answer

                assert _fewest(fits, count, guess) == answer
                if guess == answer and 0 < answer < count - 1:
                    assert calls == [answer, answer - 1]  # a right guess costs two checks
