"""The demo pipeline at a reduced size (so it cannot rot), and its example configs kept in step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ppo_core.cli import main
from ppo_core.commands import demo
from ppo_core.commands.demo import EXAMPLE_FILES, example_config_texts
from ppo_core.config import load_config
from ppo_core.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def test_example_configs_are_the_demo_configs():
    texts = example_config_texts()
    assert {f"demo/{name}" for name in EXAMPLE_FILES.values()} | {"demo-learned-reward/train-reward.yaml",
                                                                  "demo-learned-reward/ppo.yaml"} == set(texts)
    for relative, text in texts.items():
        path = REPO / "examples" / relative
        assert path.read_text(encoding="utf-8") == text, "regenerate with: python -m ppo_core.commands.demo examples"


def test_the_demo_stops_its_sft_on_train_words_and_never_sees_the_held_out_ones():
    from ppo_core import RunContext
    from ppo_core.plugin.loading import load_plugins

    configs = demo.demo_configs("demo")
    assert configs["sft"]["sft"]["stop_at"].startswith("eval/") and configs["sft"]["sft"]["eval_every"] > 0
    registry = load_plugins().registry

    def prompts(data: dict) -> dict[str, set]:
        dataset = registry.build("dataset", data["dataset"], data["options"], RunContext())
        return {split: {record.messages[0].content for record in dataset.records(split)} for split in ("train", "eval")}

    sft, ppo = prompts(configs["sft"]["data"]), prompts(configs["ppo"]["data"])
    assert sft["train"] <= ppo["train"] and not sft["train"] & sft["eval"] and len(sft["eval"]) == 150
    assert sft["eval"] <= ppo["train"] and not (sft["train"] | sft["eval"]) & ppo["eval"] and len(ppo["eval"]) == 200
    assert ppo["eval"] == prompts(demo.demo_configs("demo", 2, learned_reward=True)["ppo"]["data"])["eval"]


def test_the_fixed_step_overrides_give_back_the_sft_the_benchmarks_published():
    config = load_config(None, [*demo.FIXED_STEP_SFT, "sft.steps=330"], base=demo.demo_configs("demo")["sft"])
    assert config.sft.stop_at is None and not config.sft.eval_every and config.sft.steps == 330
    assert config.data.options == demo.TASK["options"]


def test_the_quick_demo_runs_every_stage_and_writes_the_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = out / "report" / "report.md"
    assert f"report: {report}" in printed
    for stage in ("1/5", "2/5", "3/5", "4/5", "5/5"):
        assert f"== {stage}" in printed
    text = report.read_text()
    assert "| SFT start | greedy |" in text and "| PPO result | sampled |" in text
    assert "| model | decoding | exact match | edit_distance | repetition_penalty | reward_model | total | eos rate |" in text
    assert "The learned reward is a minor term" in text and "PPO result against its SFT start (seed 0): greedy:" in text
    assert "![rewards](rewards.png)" in text
    for plot in ("rewards.png", "diagnostics.png"):
        assert (out / "report" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## Reward-hacking diagnostics" in text and "![diagnostics](diagnostics.png)" in text
    assert "| updates | length drift | eos rate | corr(reward_model, exact_match) |" in text
    assert text.count("| `reverse: ") == 8
    for numbers in ("eval_sft.json", "eval_ppo.json"):
        loaded = json.loads((out / "report" / numbers).read_text())
        assert loaded["records"] == 16 and 0.0 <= loaded["greedy"]["exact_match"] <= 1.0
    metrics = [json.loads(line) for line in (out / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert [m["update"] for m in metrics] == [1, 2]
    assert {"reward/reward_model", "reward/edit_distance", "reward/exact_match", "reward/repetition_penalty"} <= set(metrics[0])
    # the reward-hacking diagnostics, every update
    assert metrics[0]["response/length_drift"] == 1.0 and "response/length_drift" in metrics[1]
    assert {"reward/corr/reward_model/exact_match", "reward/corr/exact_match/edit_distance"} <= set(metrics[1])
    # the learned reward is a head on the frozen SFT backbone (no backbone of its own to run): PPO scores it from the
    # reference forward's hidden states (plugins/ppo-core-reward-model/tests check that path)
    saved = json.loads((out / "reward-model" / "reward_model.json").read_text())
    assert saved["backbone"]["frozen"] and saved["backbone"]["path"].endswith("sft/final")
    assert not (out / "reward-model" / "backbone").exists()


def test_the_demo_refuses_to_overwrite_a_previous_demo(tmp_path, capsys):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "keep.txt").write_text("mine")
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "demo" / "keep.txt").read_text() == "mine"


def fake_seed_run(root: Path, seed: int, greedy: float, learned_reward: bool = False) -> demo.SeedRun:
    """A finished seed's numbers, samples and metrics as run_seed returns them, without running the pipeline."""
    configs = demo.demo_configs(str(root), seed, learned_reward)
    config = load_config(None, base=configs["ppo"])
    names = [term.name for term in config.rewards]
    members = demo.reward_member_count(configs["ppo"])

    def numbers(exact_match: float) -> dict:
        entry = {"exact_match": exact_match, "rewards": {name: exact_match for name in names},
                 "reward_total": 2 * exact_match, "eos_rate": 1.0, "length_mean": 4.0}
        return {"greedy": entry, "sampled": {**entry, "exact_match": exact_match / 2}}

    report_dir = root / "report"
    report_dir.mkdir(parents=True)
    for name in ("samples_sft.jsonl", "samples_ppo.jsonl"):
        row = {"decoding": "greedy", "prompt": "reverse: ab =", "solution": "ba", "response": "ba"}
        (report_dir / name).write_text(json.dumps(row) + "\n")
    metrics = [{"update": update, "kl": 0.1, "reward/mean": 1.0, "response/eos_rate": 1.0,
                **{f"reward/{name}": 0.5 for name in names}} for update in (1, 2)]
    return demo.SeedRun(seed, config, metrics, numbers(0.25), numbers(greedy), [0.75] * members,
                         [{"substitution": 0.5}] * members, report_dir)


def test_the_demo_over_two_seeds_reports_their_mean_spread_and_each_seed(tmp_path, capsys, monkeypatch):
    greedy = {3: 0.5, 4: 0.75}
    monkeypatch.setattr(demo, "run_seed", lambda root, seed, quick, learned: fake_seed_run(root, seed, greedy[seed]))
    out = tmp_path / "demo"
    assert main(["demo", "--seeds", "3", "4", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'report' / 'report.md'}" in printed and "== seed 4 (2 of 2)" in printed
    assert (out / "seed-3" / "report" / "report.md").is_file() and (out / "seed-4" / "report" / "report.md").is_file()
    text = (out / "report" / "report.md").read_text()
    assert "seeds 3, 4;" in text and "Each cell: the mean over the seeds (min to max)" in text
    assert "| PPO result | greedy | 0.625 (0.500 to 0.750) |" in text and "| SFT start | sampled | 0.125 (0.125 to 0.125) |" in text
    assert "| PPO result, seed 3 | greedy | 0.500 |" in text and "| PPO result, seed 4 | greedy | 0.750 |" in text
    assert "Seed 3:" in text and "Seed 4:" in text  # each seed's diagnostics
    assert "(mean over 2 seeds, min to max): greedy: exact match +37.5 points (+25.0 to +50.0)" in text
    # its seed folders are the demo's own: --overwrite may replace them with other seeds
    assert main(["demo", "--seeds", "4", "--out", str(out), "--overwrite"]) == 0
    assert not (out / "seed-3").exists() and "| PPO result | greedy | 0.750 |" in (out / "report" / "report.md").read_text()


def test_the_demo_refuses_a_seed_named_twice_or_both_seed_options(tmp_path, capsys):
    assert main(["demo", "--seeds", "1", "1", "--out", str(tmp_path / "d")]) == 2
    assert "names a seed twice" in capsys.readouterr().err
    assert main(["demo", "--seeds", "1", "--seed", "2", "--out", str(tmp_path / "d")]) == 2
    assert "not both" in capsys.readouterr().err and not (tmp_path / "d").exists()
    assert main(["demo", "--env", "calculator", "--learned-reward", "--out", str(tmp_path / "d")]) == 2
    assert "leave out --learned-reward" in capsys.readouterr().err and not (tmp_path / "d").exists()


def test_a_failing_seed_stops_the_demo_and_keeps_the_finished_seeds(tmp_path, capsys, monkeypatch):
    def run_seed(root, seed, quick, learned_reward):
        if seed == 2:
            raise UserError("reward_model: options.path: no reward model at nowhere")
        return fake_seed_run(root, seed, 0.5)

    monkeypatch.setattr(demo, "run_seed", run_seed)
    assert main(["demo", "--seeds", "1", "2", "3", "--out", str(tmp_path / "demo")]) == 2
    err = capsys.readouterr().err
    assert "no reward model at nowhere" in err and "seed 2 failed" in err and "Traceback" not in err
    assert (tmp_path / "demo" / "seed-1" / "report" / "report.md").is_file()
    assert not (tmp_path / "demo" / "seed-3").exists() and not (tmp_path / "demo" / "report").exists()


def test_the_learned_reward_demo_makes_the_learned_reward_dominant(tmp_path, capsys, monkeypatch):
    configs = demo.demo_configs(str(tmp_path / "demo"), 0, learned_reward=True)
    assert configs["sft"] == demo.demo_configs(str(tmp_path / "demo"))["sft"]
    assert configs["reward"]["train"]["train_backbone"] and configs["ppo"]["ppo"]["missing_eos_penalty"]
    monkeypatch.setattr(demo, "run_seed", lambda root, seed, quick, learned: fake_seed_run(root, seed, 0.5, learned))
    assert main(["demo", "--learned-reward", "--out", str(tmp_path / "demo")]) == 0
    text = (tmp_path / "demo" / "report" / "report.md").read_text()
    assert "`reward_model` 1 (50.0%)" in text and "The learned reward is the dominant term" in text
    # its reward model is an ensemble: each member's held-out accuracy is reported
    assert "accuracy: member 1 0.750 (substitution 0.500), member 2 0.750 (substitution 0.500), member 3" in text


@pytest.mark.slow  # two minutes on a shared machine: the fast tests above run the report on stubbed stages
def test_the_quick_learned_reward_demo_runs_every_stage(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--learned-reward", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for stage in ("1/5", "2/5", "3/5", "4/5", "5/5"):
        assert f"== {stage}" in printed
    text = (out / "report" / "report.md").read_text()
    assert "`reward_model` 1 (50.0%)" in text and "The learned reward is the dominant term" in text
    assert "Divergence warnings" in text  # the watch is on: the learned reward steers
    for member, seed in (("reward-model", 0), *((f"reward-model-{k}", k * demo.MEMBER_SEED_STEP)
                                                 for k in range(1, demo.REWARD_MEMBERS))):
        saved = json.loads((out / member / "reward_model.json").read_text())
        assert not saved["backbone"]["frozen"] and (out / member / "backbone").is_dir()
        assert saved["training"]["options"]["seed"] == seed
    metrics = [json.loads(line) for line in (out / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert [m["update"] for m in metrics] == [1, 2] and "reward/reward_model" in metrics[0]


@pytest.mark.slow  # twice the quick demo: the stubbed test above checks the report over seeds
def test_the_quick_demo_over_two_seeds_runs_each_seed(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--seeds", "3", "4", "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("== 5/5") == 2
    text = (out / "report" / "report.md").read_text()
    for seed in (3, 4):
        greedy = json.loads((out / f"seed-{seed}" / "report" / "eval_ppo.json").read_text())["greedy"]
        assert f"| PPO result, seed {seed} | greedy | {greedy['exact_match']:.3f} |" in text
