"""The rule rewards of the separately installed distribution ``ppo-core-rewards`` (plugin ``rule_rewards``).

Every expected value is computed by hand and written literally (the arithmetic is in the comments).
The distribution must be installed (``pip install -e plugins/ppo-core-rewards``): without it these tests
fail, they never skip.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from ppo_core_rewards import EditDistance, ExactMatch, RepetitionPenalty
from pytest import approx

from ppo_core import RunContext, Sample
from ppo_core.errors import ConfigError, RewardError
from ppo_core.plugin.loading import ALLOW_ENV, BLOCK_ENV, load_plugins

PLUGIN = "rule_rewards"
DISTRIBUTION = "ppo-core-rewards"
REWARDS = ["edit_distance", "exact_match", "http_reward", "repetition_penalty"]


def sample(response: str, solution=None, prompt: str = "") -> Sample:
    return Sample(prompt=prompt, response=response, response_ids=(), solution=solution, stop_reason="eos")


def score(cls, response: str, solution=None, prompt: str = "", **options):
    values = cls(cls.Options(**options))([sample(response, solution, prompt)])
    assert len(values) == 1
    return values[0]


def edit(response, solution, **options):
    return score(EditDistance, response, solution, **options)


def exact(response, solution, **options):
    return score(ExactMatch, response, solution, **options)


def rep(response, prompt="", **options):
    return score(RepetitionPenalty, response, prompt=prompt, **options)


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    monkeypatch.delenv(BLOCK_ENV, raising=False)
    return monkeypatch


# ---------------------------------------------------------------------------------------------- edit_distance


class TestEditDistance:
    def test_unicode_counts_code_points(self):
        assert edit("héllo", "hello") == approx(0.8)  # lev 1 (é→e), max len 5: 1 - 1/5
        assert edit("你好世界", "你好") == approx(0.5)  # lev 2 (delete 世界), max len 4: 1 - 2/4
        assert edit("你好", "你好") == 1.0

    def test_empty_response_solution_both(self):
        assert edit("", "abc") == 0.0  # lev 3, max 3
        assert edit("abc", "") == 0.0  # lev 3, max 3
        assert edit("", "") == 1.0  # both empty: defined as 1.0
        assert edit("   ", "") == 1.0  # strip (default on) empties the response

    def test_negative_distance(self):
        assert edit("héllo", "hello", mode="negative_distance") == -1.0
        assert edit("你好世界", "你好", mode="negative_distance") == -2.0
        assert edit("", "abc", mode="negative_distance") == -3.0
        assert edit("", "", mode="negative_distance") == 0.0
        assert edit("kitten", "sitting", mode="negative_distance") == -3.0  # the textbook pair

    def test_list_of_solutions_best_match(self):
        # colour: lev 1, max 6 -> 5/6; hue: lev 5 (no shared letters), max 5 -> 0
        assert edit("color", ["colour", "hue"]) == approx(5 / 6)
        assert edit("color", ["hue", "color"]) == 1.0
        # "best" is per mode: abcdef gives sim 1 - 4/6 = 1/3 (lev 4), "x" gives sim 1 - 2/2 = 0 (lev 2)
        assert edit("ab", ["abcdef", "x"]) == approx(1 / 3)
        assert edit("ab", ["abcdef", "x"], mode="negative_distance") == -2.0

    def test_strip_on_off(self):
        assert edit("  hello\n", "hello") == 1.0  # default strip=True
        assert edit("  hello\n", "hello", strip=False) == approx(0.625)  # lev 3, max 8: 1 - 3/8
        assert edit("hello", " hello ", strip=False) == approx(5 / 7)  # solution not stripped: lev 2, max 7

    def test_casefold_on_off(self):
        assert edit("HeLLo", "hello") == approx(0.4)  # default casefold=False: lev 3, max 5
        assert edit("HeLLo", "hello", casefold=True) == 1.0
        assert edit("Straße", "STRASSE", casefold=True) == 1.0  # casefold, not lower: ß -> ss

    def test_collapse_whitespace_on_off(self):
        # "a  b\t\tc" (7) vs "a b c" (5): delete a space, \t -> space, delete a tab: lev 3 -> 1 - 3/7
        assert edit("a  b\t\tc", "a b c") == approx(4 / 7)
        assert edit("a  b\t\tc", "a b c", collapse_whitespace=True) == 1.0
        # collapse without strip keeps one leading/trailing space: " a b " vs "a b", lev 2, max 5
        assert edit(" a \n b  ", "a b", collapse_whitespace=True, strip=False) == approx(0.6)
        assert edit(" a \n b  ", "a b", collapse_whitespace=True, strip=True) == 1.0

    def test_extract_with_group(self):
        pattern = r"answer:\s*(\w+)"
        assert edit("so the answer: Paris.", "Paris", extract=pattern) == 1.0
        assert edit("answer: Pari and answer: Paris", "Paris", extract=pattern) == approx(0.8)  # first match
        # extraction first, then normalisation of the extracted part
        assert edit("x = HeLLo  ", "hello", extract=r"=(.*)$", casefold=True) == 1.0
        # the first group did not take part in the match: the answer is ""
        assert edit("b", "xy", extract=r"(a)|b") == 0.0
        assert edit("b", "xy", extract=r"(a)|b", mode="negative_distance") == -2.0

    def test_extract_without_group_whole_match(self):
        assert edit("it is 42 or 43", "42", extract=r"\d+") == 1.0
        assert edit("it is 42 or 43", "43", extract=r"\d+") == approx(0.5)  # "42": lev 1, max 2

    def test_extract_no_match(self):
        # default on_no_match=empty: scored as an empty response
        assert edit("no number here", "42", extract=r"\d+") == 0.0
        assert edit("no number here", "42", extract=r"\d+", mode="negative_distance") == -2.0
        assert edit("no number here", "", extract=r"\d+") == 1.0  # empty vs empty
        assert edit("no number here", "42", extract=r"\d+", on_no_match="abstain") is None

    def test_batch_mixes(self):
        reward = EditDistance(EditDistance.Options(extract=r"\d+", on_no_match="abstain"))
        values = reward([sample("7", "7"), sample("none", "7"), sample("8", ["1", "8"]), sample("12", "1")])
        assert values == [1.0, None, 1.0, approx(0.5)]


# ------------------------------------------------------------------------------------------------ exact_match


class TestExactMatch:
    def test_basic_and_list(self):
        assert exact("Paris", "Paris") == 1.0
        assert exact("Paris", ["London", "Paris"]) == 1.0
        assert exact("Pariss", ["London", "Paris"]) == 0.0

    def test_unicode(self):
        assert exact("héllo", "hello") == 0.0
        assert exact("你好", ["再见", "你好"]) == 1.0

    def test_empty(self):
        assert exact("", "") == 1.0
        assert exact("", "x") == 0.0
        assert exact("x", "") == 0.0

    def test_normalisation_on_off(self):
        assert exact(" Paris\n", "Paris") == 1.0
        assert exact(" Paris\n", "Paris", strip=False) == 0.0
        assert exact("PARIS", "paris") == 0.0
        assert exact("PARIS", "paris", casefold=True) == 1.0
        assert exact("New  York", "New York") == 0.0
        assert exact("New  York", "New York", collapse_whitespace=True) == 1.0
        assert exact("New\tYork", ["new york"], collapse_whitespace=True, casefold=True) == 1.0

    def test_extract(self):
        assert exact("The answer is 42.", "42", extract=r"answer is (\d+)") == 1.0
        assert exact("The answer is 42.", "42", extract=r"\d+") == 1.0
        assert exact("The answer is 43.", ["41", "42"], extract=r"\d+") == 0.0
        assert exact("no digits", "42", extract=r"\d+") == 0.0  # no match -> empty answer
        assert exact("no digits", "", extract=r"\d+") == 1.0  # ... which equals an empty solution
        assert exact("no digits", "42", extract=r"\d+", on_no_match="abstain") is None

    def test_shares_the_options_model_with_edit_distance(self):
        assert issubclass(EditDistance.Options, ExactMatch.Options)
        assert set(EditDistance.Options.model_fields) - set(ExactMatch.Options.model_fields) == {"mode"}


# ---------------------------------------------------------------------------------------------- missing solution


@pytest.mark.parametrize("cls", [EditDistance, ExactMatch], ids=lambda c: c.name)
class TestMissingSolution:
    def test_error_names_reward_and_sample(self, cls):
        reward = cls(cls.Options())
        for missing in (None, []):
            with pytest.raises(RewardError) as info:
                reward([sample("a", "a"), sample("b", missing), sample("c", None)])
            message = str(info.value)
            assert f"reward '{cls.name}'" in message
            assert "sample 1 " in message
            assert "1 more" in message
            assert "missing_solution: abstain" in message

    def test_abstain(self, cls):
        reward = cls(cls.Options(missing_solution="abstain"))
        assert reward([sample("a", "a"), sample("b", None), sample("c", [])]) == [1.0, None, None]

    def test_solution_of_wrong_type_is_an_error_even_when_abstaining(self, cls):
        reward = cls(cls.Options(missing_solution="abstain"))
        with pytest.raises(RewardError, match=rf"reward '{cls.name}'.*sample 0: the solution must be"):
            reward([sample("a", [1, 2])])


# ------------------------------------------------------------------------------------------ repetition_penalty


class TestRepetitionPenalty:
    def test_char_level(self):
        assert rep("abcabc") == approx(-0.25)  # n=3: abc bca cab abc -> 3 unique of 4
        assert rep("abcdef") == 0.0  # no repeat
        assert rep("aab", n=1) == approx(-1 / 3)  # a a b -> 2 unique of 3
        assert rep("aaaa", n=2) == approx(-2 / 3)  # aa aa aa -> 1 unique of 3
        assert rep("ééé", n=1) == approx(-2 / 3)  # code points
        assert rep("你好你好", n=2) == approx(-1 / 3)  # 你好 好你 你好 -> 2 unique of 3

    def test_shorter_than_n_and_empty(self):
        assert rep("ab") == 0.0
        assert rep("") == 0.0
        assert rep("hello world", level="word") == 0.0  # 2 words < n=3

    def test_word_level(self):
        assert rep("the cat the dog", level="word", n=1) == approx(-0.25)  # 3 unique of 4
        assert rep("a b a b a", level="word", n=2) == approx(-0.5)  # ab ba ab ba -> 2 of 4
        assert rep("one two three one two three", level="word") == approx(-0.25)  # n=3: 3 unique of 4
        assert rep("a  b\na b", level="word", n=2) == approx(-1 / 3)  # whitespace-split: ab ba ab

    def test_char_level_counts_spaces(self):
        # "a b a b" bigrams: "a ", " b", "b ", " a", "a ", " b" -> 4 unique of 6 -> -(1 - 4/6)
        assert rep("a b a b", n=2) == approx(-1 / 3)

    def test_include_prompt(self):
        # response bigrams (the cat) (cat ran); the prompt has (the cat) -> 1 new of 2
        assert rep("the cat ran", prompt="the cat sat", level="word", n=2) == 0.0
        assert rep("the cat ran", prompt="the cat sat", level="word", n=2, include_prompt=True) == approx(-0.5)
        assert rep("the cat sat", prompt="the cat sat", level="word", n=2, include_prompt=True) == -1.0
        assert rep("xyz", prompt="abcd", include_prompt=True) == 0.0  # nothing shared
        assert rep("abcab", prompt="zab", n=2, include_prompt=True) == approx(-0.5)  # ab bc ca ab; new: bc ca

    def test_scale_and_range(self):
        assert rep("abcabc", scale=2.0) == approx(-0.5)
        values = RepetitionPenalty(RepetitionPenalty.Options(n=1))([sample(t) for t in ("", "a", "aaaa", "ab")])
        assert values == [0.0, 0.0, approx(-0.75), 0.0]
        assert all(-1.0 <= v <= 0.0 for v in values)

    def test_batch_with_shared_prompt(self):
        reward = RepetitionPenalty(RepetitionPenalty.Options(n=1, include_prompt=True))
        values = reward([sample("ab", prompt="a"), sample("cd", prompt="a"), sample("aa", prompt="b")])
        assert values == [approx(-0.5), 0.0, approx(-0.5)]


# ------------------------------------------------------------------------------------------ discovery, for real


def test_discovered_through_the_installed_entry_point(clean_env):
    plugins = load_plugins()
    infos = [info for info in plugins.loaded if info.name == PLUGIN]
    failures = [failed.describe() for failed in plugins.failed if failed.info.name == PLUGIN]
    assert infos, f"plugin {PLUGIN!r} not loaded (pip install -e plugins/ppo-core-rewards); failures: {failures}"
    (info,) = infos
    assert info.distribution == DISTRIBUTION
    assert info.entry_point == "ppo_core_rewards.plugin"
    assert plugins.registry.by_plugin(PLUGIN, "reward") == REWARDS
    for name in REWARDS:
        assert plugins.registry.get("reward", name).plugin == PLUGIN


@pytest.mark.parametrize("how", ["argument", "block_env_plugin", "block_env_distribution", "allow_env_other"])
def test_block_and_allow_lists_hide_them(clean_env, how):
    if how == "argument":
        plugins = load_plugins(block=[PLUGIN])
    else:
        env, value = {
            "block_env_plugin": (BLOCK_ENV, f"datasets, {PLUGIN}"),  # names must be installed plugins
            "block_env_distribution": (BLOCK_ENV, DISTRIBUTION),
            "allow_env_other": (ALLOW_ENV, "datasets"),
        }[how]
        clean_env.setenv(env, value)
        plugins = load_plugins()
    assert PLUGIN in [info.name for info in plugins.skipped]
    assert PLUGIN not in [info.name for info in plugins.loaded]
    assert not set(REWARDS) & set(plugins.registry.names("reward"))


@pytest.mark.parametrize("allowed", [PLUGIN, DISTRIBUTION])
def test_allow_env_admits_them(clean_env, allowed):
    clean_env.setenv(ALLOW_ENV, allowed)
    plugins = load_plugins()
    assert [info.name for info in plugins.loaded] == [PLUGIN]
    assert plugins.registry.names("reward") == REWARDS


def test_the_core_never_imports_the_distribution():
    import ppo_core

    core = Path(ppo_core.__file__).parent
    offenders = [str(path) for path in core.rglob("*.py") if "ppo_core_rewards" in path.read_text(encoding="utf-8")]
    assert offenders == []


# ------------------------------------------------------------------------------------- options through the registry


@pytest.fixture
def registry(clean_env):
    return load_plugins(allow=[PLUGIN]).registry


def test_build_with_valid_options(registry):
    reward = registry.build("reward", "edit_distance", {"casefold": True, "mode": "negative_distance"}, RunContext())
    assert isinstance(reward, EditDistance)
    assert reward([sample("ABC", "abd")]) == [-1.0]
    reward = registry.build("reward", "repetition_penalty", {"n": 1, "level": "word"}, RunContext())
    assert reward([sample("x x")]) == [approx(-0.5)]
    assert isinstance(registry.build("reward", "exact_match", None, RunContext()), ExactMatch)


@pytest.mark.parametrize(
    "name, options, field",
    [
        ("edit_distance", {"casefld": True}, "casefld"),  # unknown option
        ("exact_match", {"mode": "similarity"}, "mode"),  # edit_distance's option, not exact_match's
        ("repetition_penalty", {"strip": True}, "strip"),
        ("edit_distance", {"casefold": "maybe"}, "casefold"),  # wrong types / values
        ("edit_distance", {"mode": "distance"}, "mode"),
        ("exact_match", {"extract": "(unclosed"}, "extract"),
        ("exact_match", {"missing_solution": "skip"}, "missing_solution"),
        ("repetition_penalty", {"n": "three"}, "n"),
        ("repetition_penalty", {"n": 0}, "n"),
        ("repetition_penalty", {"level": "token"}, "level"),
        ("repetition_penalty", {"scale": -1.0}, "scale"),
    ],
)
def test_build_rejects_bad_options_naming_the_field(registry, name, options, field):
    with pytest.raises(ConfigError) as info:
        registry.build("reward", name, options, RunContext())
    message = str(info.value)
    assert field in message
    assert name in message
