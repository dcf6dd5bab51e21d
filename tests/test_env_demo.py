"""`ppo-core demo --env NAME` at a reduced size: every stage, the report with episodes before and after."""

from __future__ import annotations

import json

from ppo_core.cli import main


def test_the_quick_environment_demo_runs_every_stage_and_writes_the_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--env", "calculator", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = out / "report" / "report.md"
    assert f"report: {report}" in printed and all(f"== {stage}" in printed for stage in ("1/4", "2/4", "3/4", "4/4"))
    text = report.read_text()
    assert "# ppo-core demo report: environment `calculator`" in text
    assert "| SFT start | greedy |" in text and "| PPO result | sampled |" in text
    assert text.count("```") == 4 and "     user: " in text and "assistant: " in text  # an episode before and after
    assert (out / "report" / "environment.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for numbers in ("eval_sft.json", "eval_ppo.json"):
        loaded = json.loads((out / "report" / numbers).read_text())
        assert loaded["records"] == 8 and 0.0 <= loaded["greedy"]["success_rate"] <= 1.0
    metrics = [json.loads(line) for line in (out / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert [m["update"] for m in metrics] == [1, 2] and all("env/success_rate" in m for m in metrics)


def test_an_unknown_environment_demo_is_one_line(tmp_path, capsys):
    assert main(["demo", "--env", "chess", "--out", str(tmp_path / "demo")]) == 2
    err = capsys.readouterr().err
    assert "--env 'chess' has no demo; choose one of calculator, guess_number, retry_with_feedback" in err and "Traceback" not in err
    assert not (tmp_path / "demo").exists()


def test_the_guess_number_demo_teaches_on_train_episodes_only_and_plays_the_same_game():
    from ppo_core import RunContext
    from ppo_core.commands.env_demo import env_demo_configs
    from ppo_core.plugin.loading import load_plugins

    configs = env_demo_configs("guess_number", "demo")
    sft_data, environment = configs["sft"]["data"], configs["ppo"]["environment"]
    # the transcripts play PPO's own game (same episodes, same feedback); SFT reads no eval split
    options = dict(sft_data["options"])
    assert options.pop("linear_search") > 0 and options == environment["options"]
    assert "eval_every" not in configs["sft"]["sft"]
    registry = load_plugins().registry
    transcripts = registry.build("dataset", sft_data["dataset"], sft_data["options"], RunContext())
    game = registry.build("environment", environment["name"], environment["options"], RunContext())
    key = lambda record: (record.fields["low"], record.solution)  # noqa: E731
    train, held_out = list(game.records("train")), {key(record) for record in game.records("eval")}
    assert [t.messages[0].content for t in transcripts.records("train")] == [r.messages[0].content for r in train]
    assert not {key(record) for record in train} & held_out and len(held_out) >= 200


def test_the_retry_demo_stops_its_sft_on_train_words_and_never_sees_the_held_out_ones():
    from ppo_core import RunContext
    from ppo_core.commands.env_demo import env_demo_configs
    from ppo_core.plugin.loading import load_plugins

    configs = env_demo_configs("retry_with_feedback", "demo")
    assert configs["sft"]["sft"]["stop_at"] == "eval/exact_match >= 0.45" and configs["sft"]["sft"]["eval_every"] > 0
    registry = load_plugins().registry

    def words(data: dict) -> dict[str, set]:
        dataset = registry.build("dataset", data["dataset"], data["options"], RunContext())
        return {split: {record.messages[0].content for record in dataset.records(split)} for split in ("train", "eval")}

    transcripts = configs["sft"]["data"]["options"]
    sft, ppo = words({"dataset": transcripts["dataset"], "options": transcripts["dataset_options"]}), \
        words(configs["ppo"]["data"])
    assert sft["train"] <= ppo["train"] and not sft["train"] & sft["eval"]
    assert sft["eval"] <= ppo["train"] and not (sft["train"] | sft["eval"]) & ppo["eval"] and len(ppo["eval"]) == 200
    # the stop's eval records: those same eval words as bare prompts with their answer, for the exact match
    stop_source = registry.build("dataset", configs["sft"]["data"]["dataset"], transcripts, RunContext())
    stop_words = list(stop_source.records("eval"))
    assert {r.messages[0].content for r in stop_words} == sft["eval"] and all(r.solution for r in stop_words)
