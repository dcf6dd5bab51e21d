"""The SFT transcript datasets (replayed through reset/step they give back exactly their observations and
success), the tiny models' character set and context, and registration through the real plugin manager."""

from __future__ import annotations

import json

import pytest

from ppo_core import Record, RunContext
from ppo_core.cli import main
from ppo_core.errors import ConfigError, UserError
from ppo_core.modeling.tiny import UNK_ID, build_char_tokenizer
from ppo_core.plugin.loading import load_plugins

PLUGIN, DISTRIBUTION = "environments", "ppo-core-environments"
ENVIRONMENTS = ["calculator", "guess_number", "retry_with_feedback"]
TRANSCRIPTS = [f"{name}_transcripts" for name in ENVIRONMENTS]
CONTEXT = 128  # the tiny models' n_positions
SMALL = {"calculator": {"size": 64, "eval_size": 64}, "guess_number": {"size": 64, "eval_size": 64},
         "retry_with_feedback": {"max_attempts": 3, "feedback": "positions"}}
TRANSCRIPT_OPTIONS = {"calculator": SMALL["calculator"], "guess_number": SMALL["guess_number"],
                      "retry_with_feedback": {**SMALL["retry_with_feedback"], "wrong_first": 0.5,
                                              "dataset_options": {"size": 64, "eval_size": 64}}}


@pytest.fixture(scope="module")
def registry():
    return load_plugins().registry


def environment_and_episodes(registry, name, split):
    """A fresh environment and the records its transcripts were played from."""
    environment = registry.build("environment", name, SMALL[name], RunContext())
    if name == "retry_with_feedback":
        episodes = registry.build("dataset", "reverse", {"size": 64, "eval_size": 64}, RunContext()).records(split)
    else:
        episodes = environment.records(split)
    return environment, list(episodes)


def transcripts(registry, name, split) -> list[Record]:
    dataset = registry.build("dataset", f"{name}_transcripts", TRANSCRIPT_OPTIONS[name], RunContext())
    return list(dataset.records(split))


def replay(environment, record: Record, transcript: Record):
    """Drive ``environment`` with the transcript's assistant turns; returns the messages it produced and the
    episode's success."""
    reset = environment.reset([record])
    state, produced, success = reset.states[0], [m.model_dump() for m in reset.prompts[0]], None
    for turn in [m.content for m in transcript.messages if m.role == "assistant"]:
        step = environment.step([state], [turn])
        produced.append({"role": "assistant", "content": turn})
        if step.done[0]:
            success = step.success[0]
            break
        observation = step.observations[0]
        produced += [{"role": "user", "content": observation}] if isinstance(observation, str) else \
            [m.model_dump() for m in observation]
        state = step.states[0]
    return produced, success


@pytest.mark.parametrize("split", ["train", "eval"])
@pytest.mark.parametrize("name", ENVIRONMENTS)
def test_a_transcript_replayed_through_its_environment_gives_back_its_observations_and_success(registry, name,
                                                                                                split):
    environment, episodes = environment_and_episodes(registry, name, split)
    played = transcripts(registry, name, split)
    assert len(played) == len(episodes) == 64
    for record, transcript in zip(episodes, played):
        produced, success = replay(environment, record, transcript)
        assert produced == [m.model_dump() for m in transcript.messages]
        assert success is True and transcript.fields == {"success": True}
        roles = [m.role for m in transcript.messages]
        assert roles[0] == "user" and roles[-1] == "assistant" and roles[1::2] == ["assistant"] * len(roles[1::2])


def test_what_each_transcript_shows(registry):
    calculator = transcripts(registry, "calculator", "train")
    assert {tuple(m.role for m in t.messages) for t in calculator} == {("user", "assistant", "tool", "assistant")}
    first = calculator[0].messages
    assert first[1].content == f"<calc>{first[0].content[:-1]}</calc>"
    assert first[3].content == f"<answer>{first[2].content}</answer>"
    guesses = transcripts(registry, "guess_number", "eval")
    assert max(len(t.messages) // 2 for t in guesses) == 6  # binary search over 32 numbers: at most 6 guesses
    assert {m.content for t in guesses for m in t.messages[2::2]} == {"higher", "lower"}
    retried = transcripts(registry, "retry_with_feedback", "train")
    with_feedback = [t for t in retried if len(t.messages) == 4]
    assert 16 < len(with_feedback) < 48 and len(with_feedback) + sum(len(t.messages) == 2 for t in retried) == 64
    assert all(t.messages[2].content.startswith("wrong: ") and t.messages[2].content.count("_") == 1
               for t in with_feedback)
    again = transcripts(registry, "retry_with_feedback", "train")
    assert [t.messages for t in again] == [t.messages for t in retried]  # seeded


def test_calculator_direct_answers_skip_the_tool_on_a_seeded_share_of_episodes(registry):
    """``direct_answers``: that share answers the right result at once (no tool call) and still succeeds; the
    episodes are the same as without it, and the default keeps every transcript a tool call."""
    environment, episodes = environment_and_episodes(registry, "calculator", "train")
    options = {**SMALL["calculator"], "direct_answers": 0.5}
    played = list(registry.build("dataset", "calculator_transcripts", options, RunContext()).records("train"))
    direct = [(record, t) for record, t in zip(episodes, played) if len(t.messages) == 2]
    assert 16 < len(direct) < 48 and len(direct) + sum(len(t.messages) == 4 for t in played) == 64
    for record, transcript in direct:
        assert transcript.messages[1].content == f"<answer>{record.solution}</answer>"
        assert replay(environment, record, transcript)[1] is True and transcript.fields == {"success": True}
    again = registry.build("dataset", "calculator_transcripts", options, RunContext()).records("train")
    assert [t.messages for t in again] == [t.messages for t in played]  # seeded
    assert all(len(t.messages) == 4 for t in transcripts(registry, "calculator", "train"))
    with pytest.raises(ConfigError, match="direct_answers"):
        registry.build("dataset", "calculator_transcripts", {"direct_answers": 1.5}, RunContext())


def test_guess_number_linear_search_counts_up_on_a_seeded_share_of_episodes(registry):
    """``linear_search``: that share guesses the smallest number still open, one by one (most run out of
    guesses); the episodes are the same as without it, and the default keeps every transcript a binary search."""
    options = {**SMALL["guess_number"], "feedback": "range"}
    environment = registry.build("environment", "guess_number", options, RunContext())
    episodes = list(environment.records("train"))
    played = list(registry.build("dataset", "guess_number_transcripts", {**options, "linear_search": 0.5},
                                 RunContext()).records("train"))
    counting = [(r, t) for r, t in zip(episodes, played) if t.messages[1].content == str(r.fields["low"])
                and int(r.solution) - r.fields["low"] >= 2]  # a secret near the start is found by both ways
    assert 10 < len(counting) < 40
    for record, transcript in counting:
        guesses = [int(m.content) for m in transcript.messages[1::2]]
        assert guesses == list(range(record.fields["low"], record.fields["low"] + len(guesses)))
        assert transcript.messages[2].content == f"{record.fields['low'] + 1}-{record.fields['high']}"
        produced, success = replay(environment, record, transcript)
        assert produced == [m.model_dump() for m in transcript.messages] and transcript.fields == {"success": success}
        assert success is (int(record.solution) - record.fields["low"] < 6)
    assert sum(t.fields["success"] for t in played) < 64
    assert all(t.fields["success"] for t in registry.build("dataset", "guess_number_transcripts", options,
                                                            RunContext()).records("train"))


def test_every_character_is_in_the_tiny_vocabulary_and_every_transcript_fits_the_context(registry):
    """The tiny models' tokenizer has printable ASCII only (no newline): no prompt, observation, error or
    transcript may fall back to <unk>; a whole transcript, one separator per message plus bos/eos, must leave a
    quarter of the 128-token context for what the engine's rendering adds (measured: calculator 63, guess_number
    67, retry_with_feedback 56)."""
    tokenizer = build_char_tokenizer()
    texts, longest = [], {}
    for name in ENVIRONMENTS:
        for split in ("train", "eval"):
            for transcript in transcripts(registry, name, split):
                contents = [m.content for m in transcript.messages]
                texts += contents
                longest[name] = max(longest.get(name, 0), sum(map(len, contents)) + len(contents) + 2)
    calculator = registry.build("environment", "calculator", SMALL["calculator"], RunContext())
    texts += [calculator.tool(call) for call in ("<calc>1/0</calc>", "<calc>1", "<calc>7/2</calc>", "<calc>a</calc>",
                                                 "<calc>2**2</calc>", "<calc></calc>", "<calc>" + "9" * 99 + "</calc>",
                                                 "<calc>" + "999*" * 15 + "9</calc>")]
    guess = registry.build("environment", "guess_number", {}, RunContext())
    texts += [o for o in guess.step(guess.reset(list(guess.records("eval"))[:1]).states, ["x"]).observations if o]
    for kind in ("none", "count", "positions", "marks"):
        retry = registry.build("environment", "retry_with_feedback", {"feedback": kind}, RunContext())
        texts += list(retry.step(retry.reset([Record.from_dict({"prompt": "p", "solution": "abc"})]).states,
                                 ["abx"]).observations)
    assert {"error: division by zero", "error: too big", "say a number", "wrong", "wrong: ab_", "wrong: ++-"} <= set(texts)
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert UNK_ID not in ids and len(ids) == len(text), f"{text!r} has characters outside the vocabulary"
    assert max(longest.values()) <= CONTEXT * 3 // 4, longest


def test_eval_answers_make_the_eval_split_the_datasets_records_and_marks_show_where_the_fix_is(registry):
    options = {**TRANSCRIPT_OPTIONS["retry_with_feedback"], "feedback": "marks", "eval_answers": True}
    dataset = registry.build("dataset", "retry_with_feedback_transcripts", options, RunContext())
    _, words = environment_and_episodes(registry, "retry_with_feedback", "eval")
    assert list(dataset.records("eval")) == words and all(w.solution and len(w.messages) == 1 for w in words)
    retried = [t.messages for t in dataset.records("train") if len(t.messages) == 4]
    assert retried and all(m[2].content == "wrong: " + "".join("+" if a == b else "-" for a, b in
                                                                zip(m[1].content, m[3].content)) for m in retried)
    assert all(m[2].content.count("-") == 1 for m in retried)


def test_transcript_options_are_checked(registry):
    with pytest.raises(ConfigError, match="wrong_first needs max_attempts >= 2"):
        registry.build("dataset", "retry_with_feedback_transcripts", {"max_attempts": 1, "wrong_first": 0.5},
                       RunContext())
    with pytest.raises(ConfigError, match="retry_with_feedback_transcripts'?: dataset: unknown dataset 'revers'"):
        registry.build("dataset", "retry_with_feedback_transcripts", {"dataset": "revers"}, RunContext())
    with pytest.raises(ConfigError, match="option dataset must name another dataset"):
        registry.build("dataset", "retry_with_feedback_transcripts", {"dataset": "retry_with_feedback_transcripts"},
                       RunContext())
    with pytest.raises(ConfigError, match="dataset_options.*siz"):
        registry.build("dataset", "retry_with_feedback_transcripts", {"dataset_options": {"siz": 3}}, RunContext())
    with pytest.raises(ValueError, match="split must be"):
        next(registry.build("dataset", "calculator_transcripts", {}, RunContext()).records("test"))


# ---- registration --------------------------------------------------------------------------------------------
def test_the_environments_register_through_the_plugin_manager(registry):
    assert registry.by_plugin(PLUGIN, "environment") == ENVIRONMENTS
    assert registry.by_plugin(PLUGIN, "dataset") == TRANSCRIPTS
    for name in ENVIRONMENTS:
        entry = registry.get("environment", name)
        assert entry.plugin == PLUGIN and entry.cls.name == name
    with pytest.raises(ConfigError, match="unknown option.*max_attempt.*environment 'retry_with_feedback' "
                                          "\\(plugin 'environments'\\)"):
        registry.build("environment", "retry_with_feedback", {"max_attempt": 2}, RunContext())
    with pytest.raises(UserError, match="unknown environment 'calculater'; known environments: calculator"):
        registry.get("environment", "calculater")


def test_ppo_core_plugins_lists_them(capsys):
    assert main(["plugins", "--json"]) == 0
    listing = {item["name"]: item for item in json.loads(capsys.readouterr().out)["plugins"]}
    assert listing[PLUGIN]["distribution"] == DISTRIBUTION and listing[PLUGIN]["version"] == "0.1.0"
    assert listing[PLUGIN]["entry_point"] == "ppo_core_environments.plugin"
    assert (listing[PLUGIN]["environments"], listing[PLUGIN]["datasets"], listing[PLUGIN]["rewards"]) == \
        (ENVIRONMENTS, TRANSCRIPTS, [])
    assert main(["plugins"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines.index(f"{PLUGIN} ({DISTRIBUTION} 0.1.0)")
    assert lines[header + 3].split() == ["environments:", "calculator,", "guess_number,", "retry_with_feedback"]
