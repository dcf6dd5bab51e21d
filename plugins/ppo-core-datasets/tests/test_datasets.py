"""Tests for the ppo-core-datasets distribution (plugins/ppo-core-datasets): jsonl, json, hf and synthetic tasks.

The datasets are built through the real entry point and registry (``load_plugins`` + ``Registry.build``), so
option validation is the one a run config gets.
"""

from __future__ import annotations

import gzip
import json
import logging
import random
import string
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from ppo_core import Record, RunContext
from ppo_core.errors import ConfigError, DataError
from ppo_core.plugin.loading import ALLOW_ENV, BLOCK_ENV, load_plugins


@pytest.fixture(scope="module")
def registry():
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(ALLOW_ENV, raising=False)
        mp.delenv(BLOCK_ENV, raising=False)
        plugins = load_plugins(allow=["ppo-core-datasets"])
    assert [info.name for info in plugins.loaded] == ["datasets"], [f.describe() for f in plugins.failed]
    return plugins.registry


@pytest.fixture
def make(registry):
    def make(name, **options):
        return registry.build("dataset", name, options, RunContext())

    return make


def write_lines(path: Path, lines) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def dumps(obj) -> str:
    return json.dumps(obj)


# -- discovery ------------------------------------------------------------------------------------------------


def test_discovery_lists_the_datasets_under_plugin_datasets(monkeypatch):
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    monkeypatch.delenv(BLOCK_ENV, raising=False)
    plugins = load_plugins()
    infos = {info.name: info for info in plugins.loaded}
    assert "datasets" in infos, ("ppo-core-datasets is not installed or failed to load: "
                                 f"{[f.describe() for f in plugins.failed]}")
    assert infos["datasets"].distribution == "ppo-core-datasets"
    assert infos["datasets"].entry_point == "ppo_core_datasets.plugin"
    assert plugins.registry.by_plugin("datasets", "dataset") == ["copy", "hf", "json", "jsonl", "reverse", "sort"]
    assert plugins.registry.by_plugin("datasets", "reward") == []


def test_plugin_module_does_not_import_the_optional_datasets_library():
    import ppo_core_datasets.plugin  # noqa: F401  (already imported by discovery)

    # the hf module imports `datasets` only inside import_datasets()
    source = Path(sys.modules["ppo_core_datasets.hf"].__file__).read_text()
    assert "\nimport datasets" not in source and "\nfrom datasets" not in source


# -- jsonl: the three record forms ----------------------------------------------------------------------------


def test_jsonl_reads_every_record_form(tmp_path, make):
    path = write_lines(tmp_path / "data.jsonl", [
        dumps({"role": "user", "content": "seed with str", "solution": "a"}),
        dumps({"content": "seed without role", "solution": ["a", "b"]}),
        dumps({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "chat"}],
               "solution": "c"}),
        dumps({"prompt": "plain", "solution": ["x"], "id": 7, "meta": {"k": [1, 2]}}),
        dumps({"prompt": "no solution"}),
        dumps({"prompt": "null solution", "solution": None}),
    ])
    records = list(make("jsonl", path=str(path)).records("train"))
    assert all(isinstance(record, Record) for record in records)
    assert [r.messages[-1].content for r in records] == [
        "seed with str", "seed without role", "chat", "plain", "no solution", "null solution"]
    assert records[0].messages[0].role == "user" and records[0].solution == "a"
    assert records[1].messages[0].role == "user" and records[1].solution == ["a", "b"]
    assert [m.role for m in records[2].messages] == ["system", "user"] and records[2].solutions == ["c"]
    assert records[3].solution == ["x"] and records[3].fields == {"id": 7, "meta": {"k": [1, 2]}}
    assert records[4].solution is None and records[5].solution is None


def test_jsonl_reads_trl_conversational_prompts_and_messages_ending_with_the_answer(tmp_path, make):
    system, user = {"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"}
    path = write_lines(tmp_path / "trl.jsonl", [
        dumps({"prompt": [system, user], "solution": "4", "level": 1}),  # TRL's conversational prompt column
        dumps({"messages": [system, user, {"role": "assistant", "content": "4"}]}),  # TRL's messages column
    ])
    prompt_form, messages_form = make("jsonl", path=str(path)).records("train")
    for record in (prompt_form, messages_form):
        assert [(m.role, m.content) for m in record.messages] == [("system", "be brief"), ("user", "2+2?")]
        assert record.solution == "4"
    assert prompt_form.fields == {"level": 1} and messages_form.fields == {}


def test_jsonl_blank_lines_are_skipped_silently_and_keep_line_numbers(tmp_path, make, caplog):
    path = tmp_path / "blank.jsonl"
    path.write_text("\n" + dumps({"prompt": "a"}) + "\n   \t\n\n" + dumps({"prompt": "b"}) + "\n\n"
                    + dumps({"content": 1}) + "\n\n", encoding="utf-8")
    dataset = make("jsonl", path=str(path))
    with pytest.raises(DataError) as info, caplog.at_level(logging.WARNING, "ppo_core.datasets"):
        list(dataset.records("train"))
    assert "line 7" in str(info.value)  # physical line numbers, blank lines counted
    assert caplog.records == []


def test_jsonl_byte_order_mark_and_gzip(tmp_path, make):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + dumps({"prompt": "p", "solution": "s"}).encode() + b"\n")
    assert [r.solution for r in make("jsonl", path=str(path)).records("train")] == ["s"]
    gz = tmp_path / "data.jsonl.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as stream:
        stream.write(dumps({"prompt": "p", "solution": "z"}) + "\n")
    assert [r.solution for r in make("jsonl", path=str(gz)).records("train")] == ["z"]


# -- jsonl: malformed lines -----------------------------------------------------------------------------------

GOOD = dumps({"prompt": "fine", "solution": "ok"})

MALFORMED = [
    # (id, bad line, text that names the field or problem)
    ("bad-json", '{"prompt": "a" "solution": "b"}', "not valid JSON"),
    ("truncated-json", '{"prompt": "a", ', "not valid JSON"),
    ("seed-missing-content", dumps({"role": "user", "solution": "x"}), "content: Field required"),
    ("seed-content-wrong-type", dumps({"role": "user", "content": 5}), "content: Input should be a valid string"),
    ("seed-role-wrong-type", dumps({"role": 3, "content": "c"}), "role: Input should be a valid string"),
    ("plain-prompt-wrong-type", dumps({"prompt": 5}), "prompt: Input should be a valid string"),
    # a list is TRL's conversational prompt: its turns are checked as the chat form's, named under `prompt`
    ("conversational-prompt-not-turns", dumps({"prompt": ["a"]}), "prompt.0: Input should be a valid dictionary"),
    ("conversational-prompt-content-missing", dumps({"prompt": [{"role": "user"}]}), "prompt.0.content: Field required"),
    ("plain-prompt-null", dumps({"prompt": None}), "prompt: Input should be a valid string"),
    ("chat-content-missing", dumps({"messages": [{"role": "user"}]}), "messages.0.content: Field required"),
    ("chat-messages-wrong-type", dumps({"messages": "hi"}), "messages: Input should be a valid list"),
    ("chat-messages-empty", dumps({"messages": []}), "messages: List should have at least 1 item"),
    ("chat-unknown-key", dumps({"messages": [{"role": "user", "content": "c", "name": "x"}]}),
     "messages.0.name: Extra inputs are not permitted"),
    ("no-prompt-at-all", dumps({"solution": "x", "id": 1}), "prompt: missing"),
    ("solution-number", dumps({"prompt": "p", "solution": 5}), "solution: should be a string or a list of strings"),
    ("solution-object", dumps({"prompt": "p", "solution": {"a": 1}}), "solution: should be a string or a list"),
    ("solution-list-of-numbers", dumps({"prompt": "p", "solution": ["a", 2]}),
     "solution.1: Input should be a valid string"),
    ("solution-empty-list", dumps({"content": "c", "solution": []}), "solution: Value error, a list of solutions"),
    ("not-an-object-array", "[1, 2]", "expected a JSON object (one record), got array"),
    ("not-an-object-string", '"just text"', "expected a JSON object (one record), got string"),
    ("not-an-object-number", "42", "expected a JSON object (one record), got number"),
    ("not-an-object-null", "null", "expected a JSON object (one record), got null"),
]


@pytest.mark.parametrize("bad, field", [case[1:] for case in MALFORMED], ids=[case[0] for case in MALFORMED])
def test_jsonl_malformed_line_names_file_line_and_field(tmp_path, make, bad, field):
    path = write_lines(tmp_path / "broken.jsonl", [GOOD, GOOD, "", bad, GOOD])
    dataset = make("jsonl", path=str(path))
    with pytest.raises(DataError) as info:
        list(dataset.records("train"))
    message = str(info.value)
    assert message.startswith(f"{path}, line 4: "), message
    assert field in message, message


def test_jsonl_seed_form_error_says_content_not_messages_path(tmp_path, make):
    path = write_lines(tmp_path / "seed.jsonl", [dumps({"role": "user", "content": 5})])
    with pytest.raises(DataError) as info:
        list(make("jsonl", path=str(path)).records("train"))
    assert str(info.value) == f"{path}, line 1: content: Input should be a valid string (got 5)"
    assert "messages" not in str(info.value)


def test_jsonl_bad_json_names_the_column(tmp_path, make):
    path = write_lines(tmp_path / "bad.jsonl", [GOOD, '{"prompt": "a",, }'])
    with pytest.raises(DataError, match=r"bad\.jsonl, line 2: not valid JSON: .*\(column 16\)"):
        list(make("jsonl", path=str(path)).records("train"))


def test_jsonl_invalid_utf8_names_the_line(tmp_path, make):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(GOOD.encode() + b"\n" + '{"prompt": "caf\u00e9"}'.encode("latin-1") + b"\n")
    with pytest.raises(DataError, match=r"latin1\.jsonl, line 2: not valid UTF-8"):
        list(make("jsonl", path=str(path)).records("train"))


@pytest.mark.parametrize("content", ["", "\n\n  \n"], ids=["empty", "only-blank-lines"])
def test_jsonl_empty_file_is_an_error(tmp_path, make, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(DataError) as info:
        list(make("jsonl", path=str(path)).records("train"))
    assert str(info.value) == f"{path}: no records"


def test_missing_file_is_reported_when_the_dataset_is_built(tmp_path, make):
    with pytest.raises(DataError, match=r"nowhere\.jsonl: no such file \(option 'path' of dataset 'jsonl'\)"):
        make("jsonl", path=str(tmp_path / "nowhere.jsonl"))
    with pytest.raises(DataError, match=r"option 'eval_path'"):
        make("jsonl", path=str(write_lines(tmp_path / "a.jsonl", [GOOD])), eval_path=str(tmp_path / "no.jsonl"))


# -- skip_invalid ---------------------------------------------------------------------------------------------


def test_skip_invalid_skips_counts_and_logs(tmp_path, make, caplog):
    path = write_lines(tmp_path / "mixed.jsonl", [
        GOOD, "{not json", dumps({"role": "user"}), "", GOOD, dumps({"prompt": "p", "solution": 3}), GOOD])
    dataset = make("jsonl", path=str(path), skip_invalid=True)
    with caplog.at_level(logging.WARNING, logger="ppo_core.datasets"):
        records = list(dataset.records("train"))
    assert len(records) == 3
    assert dataset.skipped["train"] == 3
    [warning] = [r for r in caplog.records if r.name == "ppo_core.datasets"]
    assert warning.levelno == logging.WARNING
    assert "skipped 3 invalid lines" in warning.getMessage() and str(path) in warning.getMessage()
    assert f"{path}, line 2: not valid JSON" in warning.getMessage()  # the first problem, for a start
    # a second pass counts afresh
    list(dataset.records("train"))
    assert dataset.skipped["train"] == 3


def test_skip_invalid_with_nothing_valid_is_still_an_error(tmp_path, make):
    path = write_lines(tmp_path / "junk.jsonl", ["{", "[]"])
    dataset = make("jsonl", path=str(path), skip_invalid=True)
    with pytest.raises(DataError, match=r"junk\.jsonl: no records \(all 2 lines were invalid and skipped\)"):
        list(dataset.records("train"))
    assert dataset.skipped["train"] == 2


# -- eval split -----------------------------------------------------------------------------------------------


def _prompts(dataset, split):
    return [record.prompt_text for record in dataset.records(split)]


def test_eval_fraction_splits_disjoint_complete_and_deterministic(tmp_path, make):
    path = write_lines(tmp_path / "many.jsonl", [dumps({"prompt": f"p{i}"}) for i in range(2000)])
    first = make("jsonl", path=str(path), eval_fraction=0.1, split_seed=3)
    train, evaluation = _prompts(first, "train"), _prompts(first, "eval")
    assert not set(train) & set(evaluation)
    assert sorted(train + evaluation) == sorted(f"p{i}" for i in range(2000))
    assert 140 < len(evaluation) < 260  # ~10 %
    again = make("jsonl", path=str(path), eval_fraction=0.1, split_seed=3)
    assert _prompts(again, "train") == train and _prompts(again, "eval") == evaluation
    other = make("jsonl", path=str(path), eval_fraction=0.1, split_seed=4)
    assert _prompts(other, "eval") != evaluation
    larger = make("jsonl", path=str(path), eval_fraction=0.2, split_seed=3)
    assert set(evaluation) < set(_prompts(larger, "eval"))  # raising the fraction only moves train -> eval


def test_eval_fraction_keys_on_line_number_not_content(tmp_path, make):
    path = write_lines(tmp_path / "same.jsonl", [GOOD] * 400)
    dataset = make("jsonl", path=str(path), eval_fraction=0.25)
    assert 0 < len(_prompts(dataset, "eval")) < 400


def test_no_eval_configured_gives_an_empty_eval_split(tmp_path, make):
    dataset = make("jsonl", path=str(write_lines(tmp_path / "d.jsonl", [GOOD])))
    assert list(dataset.records("eval")) == [] and not dataset.has_eval
    with pytest.raises(ValueError, match="split must be"):
        dataset.records("test")


def test_eval_path_is_read_for_the_eval_split(tmp_path, make):
    train = write_lines(tmp_path / "train.jsonl", [dumps({"prompt": "t"})])
    evaluation = write_lines(tmp_path / "eval.jsonl", [dumps({"prompt": "e"}), dumps({"prompt": "f"})])
    dataset = make("jsonl", path=str(train), eval_path=str(evaluation))
    assert _prompts(dataset, "train") == ["t"] and _prompts(dataset, "eval") == ["e", "f"]
    bad_eval = write_lines(tmp_path / "bad_eval.jsonl", [GOOD, dumps({"prompt": 1})])
    with pytest.raises(DataError, match=r"bad_eval\.jsonl, line 2: prompt: "):
        list(make("jsonl", path=str(train), eval_path=str(bad_eval)).records("eval"))


def test_a_split_the_hash_leaves_empty_is_an_error(tmp_path, make):
    path = write_lines(tmp_path / "one.jsonl", [GOOD])
    dataset = make("jsonl", path=str(path), eval_fraction=0.5)
    empty = "eval" if _in_train(dataset) else "train"
    with pytest.raises(DataError, match=rf"none of its 1 records fell in the {empty} split \(eval_fraction=0.5"):
        list(dataset.records(empty))


def _in_train(dataset) -> bool:
    try:
        return len(list(dataset.records("train"))) == 1
    except DataError:
        return False


@pytest.mark.parametrize("options, expected", [
    ({"eval_fraction": 1.0}, "eval_fraction: Input should be less than 1"),
    ({"eval_fraction": -0.1}, "eval_fraction: Input should be greater than or equal to 0"),
    ({"eval_fraction": 0.1, "eval_path": "x.jsonl"}, "set eval_path or eval_fraction, not both"),
    ({"skip_invalid": "maybe"}, "skip_invalid: Input should be a valid boolean"),
    ({"shuffle": True}, "unknown option(s) shuffle"),
])
def test_file_options_are_validated(tmp_path, make, options, expected):
    path = write_lines(tmp_path / "d.jsonl", [GOOD])
    with pytest.raises(ConfigError) as info:
        make("jsonl", path=str(path), **options)
    assert expected in str(info.value)


def test_path_is_required(make):
    with pytest.raises(ConfigError, match="path: Field required"):
        make("json")


# -- json ------------------------------------------------------------------------------------------------------


def test_json_reads_a_top_level_array(tmp_path, make):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([
        {"role": "user", "content": "seed", "solution": "a"},
        {"messages": [{"role": "user", "content": "chat"}], "solution": ["b", "c"]},
        {"prompt": "plain", "solution": "d", "level": 2},
    ], indent=2))
    records = list(make("json", path=str(path)).records("train"))
    assert [r.prompt_text for r in records] == ["seed", "chat", "plain"]
    assert [r.solution for r in records] == ["a", ["b", "c"], "d"]
    assert records[2].fields == {"level": 2}


@pytest.mark.parametrize("items, expected", [
    ([{"prompt": "ok"}, {"role": "user"}], "index 1: content: Field required"),
    ([{"prompt": "ok"}, {"prompt": "ok"}, {"prompt": "p", "solution": 1}], "index 2: solution: should be a string"),
    ([{"prompt": "ok"}, "text"], "index 1: expected a JSON object (one record), got string"),
    ([{"messages": [{"role": "user", "content": None}]}], "index 0: messages.0.content: Input should be"),
])
def test_json_errors_name_file_and_array_index(tmp_path, make, items, expected):
    path = tmp_path / "arr.json"
    path.write_text(json.dumps(items))
    with pytest.raises(DataError) as info:
        list(make("json", path=str(path)).records("train"))
    assert str(info.value).startswith(f"{path}, {expected}"), str(info.value)


@pytest.mark.parametrize("text, expected", [
    ("", "no records (the file is empty)"),
    ("[]", "no records"),
    ('{"prompt": "x"}', "expected a top-level JSON array of records, got object"),
    ('[{"prompt": "x"},\n {"prompt": ]', "not valid JSON: Expecting value (line 2, column 13)"),
])
def test_json_file_level_errors(tmp_path, make, text, expected):
    path = tmp_path / "file.json"
    path.write_text(text)
    with pytest.raises(DataError) as info:
        list(make("json", path=str(path)).records("train"))
    assert str(info.value) == f"{path}: {expected}"


def test_json_skip_invalid_and_eval_fraction(tmp_path, make):
    path = tmp_path / "arr.json"
    path.write_text(json.dumps([{"prompt": f"p{i}"} for i in range(300)] + [{"nope": 1}]))
    dataset = make("json", path=str(path), eval_fraction=0.2, skip_invalid=True)
    train, evaluation = _prompts(dataset, "train"), _prompts(dataset, "eval")
    assert len(train) + len(evaluation) == 300 and not set(train) & set(evaluation) and evaluation
    assert dataset.skipped == {"train": 1, "eval": 1}


# -- streaming -------------------------------------------------------------------------------------------------


def test_jsonl_streams_a_large_file(tmp_path, make):
    path = tmp_path / "big.jsonl"
    line = dumps({"prompt": "reverse: " + "x" * 40 + " =", "solution": "y" * 40, "id": 0})
    with open(path, "w", encoding="utf-8") as stream:
        chunk = "\n".join([line] * 10_000) + "\n"
        for _ in range(20):
            stream.write(chunk)
    assert path.stat().st_size > 20_000_000  # 200k lines

    dataset = make("jsonl", path=str(path))
    tracemalloc.start()
    try:
        start = time.perf_counter()
        records = dataset.records("train")
        first = [next(records) for _ in range(1000)]
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    records.close()
    assert len(first) == 1000 and first[-1].solution == "y" * 40
    assert peak < 3_000_000, f"peak {peak} bytes while taking 1000 records: the file was not streamed"
    assert elapsed < 1.0, f"{elapsed:.2f} s for 1000 records"


# -- synthetic tasks -------------------------------------------------------------------------------------------


def _baseline_prompts(n, seed):
    """make_tiny_models.py build_prompts() of the TRL baseline, verbatim."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        k = rng.randint(3, 8)
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(k))
        rows.append({"prompt": f"reverse: {word} =", "solution": word[::-1]})
    return rows


def _pairs(dataset, split):
    return [(record.prompt_text, record.solution) for record in dataset.records(split)]


def test_reverse_train_split_is_the_benchmark_prompts(make):
    dataset = make("reverse")
    assert _pairs(dataset, "train") == [(r["prompt"], r["solution"]) for r in _baseline_prompts(512, 0)]
    assert _pairs(dataset, "train")[0] == ("reverse: ynbiqp =", "pqibny")
    assert len(_pairs(dataset, "eval")) == 64


@pytest.mark.parametrize("name", ["reverse", "copy", "sort"])
def test_synthetic_is_deterministic_for_a_seed(make, name):
    first, again = make(name, seed=11, size=200, eval_size=50), make(name, seed=11, size=200, eval_size=50)
    assert _pairs(first, "train") == _pairs(again, "train") and _pairs(first, "eval") == _pairs(again, "eval")
    other = make(name, seed=12, size=200, eval_size=50)
    assert _pairs(other, "train") != _pairs(first, "train")
    # the eval size never changes the train split
    assert _pairs(make(name, seed=11, size=200, eval_size=5), "train") == _pairs(first, "train")


def test_synthetic_does_not_touch_global_random_state(make):
    random.seed(123)
    expected = random.random()
    random.seed(123)
    make("reverse", size=50, eval_size=10)
    assert random.random() == expected


@pytest.mark.parametrize("name", ["reverse", "copy", "sort"])
def test_synthetic_train_and_eval_never_overlap(make, name):
    # a small word space (26 + 676 words) makes collisions certain without the check
    dataset = make(name, size=600, eval_size=40, min_len=1, max_len=2, seed=5)
    train_words, eval_words = dataset.words("train"), dataset.words("eval")
    assert len(eval_words) == 40 and len(set(eval_words)) == 40
    assert not set(eval_words) & set(train_words)
    assert not {p for p, _ in _pairs(dataset, "eval")} & {p for p, _ in _pairs(dataset, "train")}
    if name == "sort":  # anagrams share an answer: no eval answer is a train answer
        assert not {s for _, s in _pairs(dataset, "eval")} & {s for _, s in _pairs(dataset, "train")}


@pytest.mark.parametrize("name, solve", [
    ("reverse", lambda w: w[::-1]), ("copy", lambda w: w), ("sort", lambda w: "".join(sorted(w)))])
def test_synthetic_prompts_and_solutions(make, name, solve):
    dataset = make(name, size=300, eval_size=30, min_len=4, max_len=6, seed=2)
    for split in ("train", "eval"):
        for word, record in zip(dataset.words(split), dataset.records(split)):
            assert record.prompt_text == f"{name}: {word} ="
            assert record.solution == solve(word) and record.fields == {}
            assert 4 <= len(word) <= 6 and set(word) <= set(string.ascii_lowercase)


def test_synthetic_options_are_validated(make):
    with pytest.raises(ConfigError, match=r"min_len \(5\) must not exceed max_len \(4\)"):
        make("reverse", min_len=5, max_len=4)
    with pytest.raises(ConfigError, match="size: Input should be greater than or equal to 1"):
        make("copy", size=0)
    with pytest.raises(ConfigError, match="unknown option"):
        make("sort", length=3)
    with pytest.raises(ConfigError, match=r"eval_size=64 is more than the \d+ words"):
        make("reverse", min_len=1, max_len=1, size=500)  # 26 one-letter words, all used by train
    assert list(make("copy", eval_size=0).records("eval")) == []


# -- hf ---------------------------------------------------------------------------------------------------------


def test_hf_without_datasets_says_what_to_install(tmp_path, make, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` now raises ImportError
    with pytest.raises(ConfigError) as info:
        make("hf", path=str(tmp_path), format="disk")
    assert "pip install 'ppo-core-datasets[hf]'" in str(info.value)


def test_hf_options_are_validated(make):
    with pytest.raises(ConfigError, match="set prompt_column or messages_column, not both"):
        make("hf", path="x", prompt_column="q", messages_column="m")
    with pytest.raises(ConfigError, match="format: Input should be 'disk', 'parquet', 'json' or 'csv'"):
        make("hf", path="x", format="arrow")


def test_hf_reads_saved_datasets_and_files(tmp_path, make):
    datasets = pytest.importorskip("datasets")
    rows = {"question": ["q0", "q1", "q2"], "answer": ["a0", "a1", "a2"], "level": [1, 2, 3]}
    saved = tmp_path / "saved"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict(rows),
        "test": datasets.Dataset.from_dict({"prompt": ["t"], "solution": [["x", "y"]]}),
    }).save_to_disk(str(saved))
    dataset = make("hf", path=str(saved), eval_split="test", prompt_column="question", solution_column="answer")
    train = list(dataset.records("train"))
    assert [(r.prompt_text, r.solution, r.fields) for r in train] == [
        ("q0", "a0", {"level": 1}), ("q1", "a1", {"level": 2}), ("q2", "a2", {"level": 3})]
    # the mapping applies to both splits; the test split has no `question` column
    with pytest.raises(DataError, match=r"no column 'question' \(option prompt_column\); its columns: prompt"):
        list(dataset.records("eval"))
    plain = make("hf", path=str(saved), eval_split="test")
    assert [(r.prompt_text, r.solution) for r in plain.records("eval")] == [("t", ["x", "y"])]
    with pytest.raises(ConfigError, match="has no split 'dev'"):
        list(make("hf", path=str(saved), eval_split="dev").records("eval"))

    table = datasets.Dataset.from_dict(rows)
    table.to_parquet(str(tmp_path / "d.parquet"))
    table.to_csv(str(tmp_path / "d.csv"), index=False)
    (tmp_path / "d.jsonl").write_text("\n".join([
        dumps({"messages": [{"role": "user", "content": "m"}], "solution": "s"}),
        dumps({"messages": [{"role": "user", "content": "n"}], "solution": 5})]) + "\n")
    (tmp_path / "mixed.jsonl").write_text("\n".join([
        dumps({"prompt": "p", "solution": "s"}),
        dumps({"messages": [{"role": "user", "content": "m"}], "solution": ["t"], "id": 4})]) + "\n")
    cache = str(tmp_path / "cache")
    for name, fmt in (("d.parquet", None), ("d.csv", "csv")):
        records = list(make("hf", path=str(tmp_path / name), format=fmt, prompt_column="question",
                            solution_column="answer", eval_path=str(tmp_path / name), cache_dir=cache).records("eval"))
        assert [(r.prompt_text, r.solution, r.fields["level"]) for r in records][0] == ("q0", "a0", 1)
    with pytest.raises(DataError, match=r"d\.jsonl, row 1: solution: should be a string or a list of strings"):
        list(make("hf", path=str(tmp_path / "d.jsonl"), cache_dir=cache).records("train"))
    # Arrow gives every row every column: the missing form's column arrives as None and is dropped
    mixed = list(make("hf", path=str(tmp_path / "mixed.jsonl"), cache_dir=cache).records("train"))
    assert [(r.prompt_text, r.solution, r.fields) for r in mixed] == [("p", "s", {"id": None}), ("m", ["t"], {"id": 4})]
