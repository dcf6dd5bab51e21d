"""The demo pipeline at a reduced size (so it cannot rot), and its example configs kept in step."""

from __future__ import annotations

import json
from pathlib import Path

from ppo_core.cli import main
from ppo_core.commands.demo import EXAMPLE_FILES, example_config_texts

REPO = Path(__file__).resolve().parents[1]


def test_example_configs_are_the_demo_configs():
    for name, text in example_config_texts().items():
        path = REPO / "examples" / "demo" / EXAMPLE_FILES[name]
        assert path.read_text(encoding="utf-8") == text, "regenerate with: python -m ppo_core.commands.demo examples/demo"


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
