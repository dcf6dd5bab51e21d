"""`ppo-core demo --env NAME`: the pipeline on a bundled environment, ending in a report.

init-model -> SFT warm start on the environment's transcripts (its episodes played by a good policy) -> PPO
on the environment's own episodes (turn rewards; no other reward) -> held-out evaluation of the SFT start and the
PPO result, greedy and sampled (success, turns, tool calls) -> report.md with a plot and an episode's
transcript before and after.

The SFT start is deliberately short: a start that already solves every episode leaves PPO nothing to show.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from ..errors import UserError
from .demo import REPORT_DIR, SFT_TASK, clear_demo_dir, evaluate_start_and_result, stage
from .demo_report import plot_panels

REVERSE = {"dataset": "reverse", "options": {"size": 2000, "eval_size": 200, "min_len": 2, "max_len": 4}}
RETRY = {"max_attempts": 2, "feedback": "count"}
#: per environment: its section, the SFT steps of the warm start (and other `sft:` keys), and, for an environment
#: that wraps a dataset, the PPO data and the SFT data (its transcripts over the same dataset)
ENVIRONMENTS: dict[str, dict[str, Any]] = {
    "retry_with_feedback": {
        "environment": {"name": "retry_with_feedback", "max_turns": 2, "max_turn_tokens": 6, "max_episode_tokens": 32,
                        "options": RETRY},
        "data": REVERSE,
        # SFT on the first 1800 of PPO's 2000 train words; its eval split (150 words) comes from the other 200
        # train words, so the held-out episodes stay unseen by both stages and by the stop below
        "sft_data": {"dataset": "retry_with_feedback_transcripts",
                     "options": {**RETRY, "dataset": "reverse", "wrong_first": 0.3,
                                 "dataset_options": SFT_TASK["options"]}},
        # the start is half-learned on every seed: SFT stops at the same held-out loss (the seeds reach it
        # between 360 and 880 steps; at a fixed 500 steps they started at 0.59-1.00 greedy)
        "sft_steps": 1500,
        "sft": {"eval_every": 10, "stop_at": "eval/loss <= 0.9"},
        # the finished episode's last answer also scored by edit distance: a dense signal beside success
        "rewards": [{"name": "edit_distance", "weight": 1.0}],
        "lr": 3.0e-4,
    },
    "guess_number": {
        "environment": {"name": "guess_number", "max_turns": 6, "max_turn_tokens": 4, "max_episode_tokens": 72},
        "sft_steps": 200,
    },
    "calculator": {
        # no stop string: the transcripts end a tool call with eos, and the warm-started model does too
        "environment": {"name": "calculator", "max_turns": 3, "max_turn_tokens": 24,
                        "options": {"min_digits": 2, "max_digits": 2}},
        # 70% of the transcripts answer at once without the tool: the start has the format and the copy but
        # answers directly when greedy (and cannot multiply); PPO must learn when to call the tool
        "sft_data": {"dataset": "calculator_transcripts",
                     "options": {"min_digits": 2, "max_digits": 2, "direct_answers": 0.7}},
        "sft_steps": 300,
    },
}
QUICK = {"sft": ["sft.steps=10"], "ppo": ["train.updates=2", "ppo.rollout_batch_size=8", "ppo.minibatch_size=4"],
         "eval_records": 8}
DEMO_ENTRIES = {"model", "sft", "ppo", REPORT_DIR}


def env_demo_configs(name: str, out: str, seed: int = 0) -> dict[str, dict[str, Any]]:
    """The two stage configs (sft, ppo) of environment ``name``'s demo, writing under ``out``."""
    if name not in ENVIRONMENTS:
        raise UserError(f"demo: --env {name!r} has no demo; choose one of {', '.join(sorted(ENVIRONMENTS))}")
    spec = ENVIRONMENTS[name]
    environment = spec["environment"]
    generation = {"max_new_tokens": environment["max_turn_tokens"], "temperature": 1.0}
    sft = {
        "model": {"path": f"{out}/model"},
        "data": spec.get("sft_data", {"dataset": f"{name}_transcripts", "options": environment.get("options", {})}),
        "generation": generation,
        "optim": {"lr": 3.0e-3, "schedule": "constant", "warmup_steps": 20},
        "train": {"seed": seed, "output_dir": f"{out}/sft"},
        "sft": {"steps": spec["sft_steps"], "batch_size": 32, "log_every": 25, "max_response_tokens": 96,
                **spec.get("sft", {})},
    }
    ppo = {
        "model": {"path": f"{out}/sft/final", "critic": "shared"},
        **({"data": spec["data"]} if "data" in spec else {}),
        "environment": environment,
        "rewards": spec.get("rewards", []),
        "ppo": {"rollout_batch_size": 64, "minibatch_size": 16, "epochs": 4, "kl": {"coef": 0.01}},
        "generation": generation,
        # 3e-4: at the demo's 1e-3 one update of 16 steps took a calculator start from 0.875 to 0 solved
        "optim": {"lr": spec.get("lr", 3.0e-4), "schedule": "linear"},
        "train": {"seed": seed, "updates": 60, "output_dir": f"{out}/ppo"},
    }
    return {"sft": sft, "ppo": ppo}


def run_env_demo(name: str, out: str, quick: bool = False, overwrite: bool = False, seed: int = 0,
                 ppo_overrides: Sequence[str] = ()) -> Path:
    """Every stage of environment ``name``'s demo (``ppo_overrides``: ``--set`` assignments for its PPO stage);
    returns the report's path."""
    from ..config import load_config
    from ..modeling.tiny import init_model
    from .sft import train_sft
    from .train import train

    configs = env_demo_configs(name, out, seed)
    root = clear_demo_dir(out, overwrite, DEMO_ENTRIES)

    stage("1/4 init-model: a character-level tokenizer and a tiny GPT-2")
    init_model(configs["sft"]["model"]["path"], "tiny", seed=seed)

    stage(f"2/4 sft: a short warm start on {name}'s transcripts")
    train_sft(load_config(None, QUICK["sft"] if quick else [], base=configs["sft"]), source="demo sft config")

    stage(f"3/4 train: PPO on {name}'s episodes")
    ppo_config = load_config(None, [*(QUICK["ppo"] if quick else []), *ppo_overrides], base=configs["ppo"])
    final = train(ppo_config, source="demo ppo config")

    stage("4/4 eval: held-out episodes of the SFT start and the PPO result")
    report_dir = root / REPORT_DIR
    before, after, metrics = evaluate_start_and_result(ppo_config, configs["ppo"]["model"]["path"], final,
                                                       report_dir, QUICK["eval_records"] if quick else None)
    report = write_env_report(report_dir, name, metrics, before, after, ppo_config, seed)
    print(f"\nreport: {report}")
    return report


def write_env_report(directory: Path, name: str, metrics: list[dict], before: dict, after: dict, config,
                     seed: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    plot = plot_panels(metrics, [("env/success_rate", "success rate"), ("env/turns_mean", "turns per episode"),
                                 ("env/tool_calls", "tool calls per episode"),
                                 ("env/return_mean", "return (turn rewards)"),
                                 ("kl", "KL to the reference"), ("env/truncated_rate", "cut off")],
                       directory / "environment.png")
    lines = [
        f"# ppo-core demo report: environment `{name}`",
        "",
        f"Environment `{name}` {config.environment.options or ''}, up to {config.environment.max_turns} turns, "
        f"seed {seed}, {len(metrics)} PPO updates of {config.ppo.rollout_batch_size} episodes; "
        f"{before['records']} held-out episodes.",
        "",
        "## Held-out episodes",
        "",
        *episode_table(before, after),
        "",
        "## Over the PPO updates",
        "",
        f"![environment]({plot.name})",
        "",
        "## An episode (greedy), before and after PPO",
        "",
        *transcripts(directory / "samples_sft.jsonl", directory / "samples_ppo.jsonl"),
        "",
    ]
    report = directory / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    return report


def episode_table(before: dict, after: dict) -> list[str]:
    columns = [("success_rate", "success"), ("turns_mean", "turns"), ("tool_calls", "tool calls"),
               ("truncated_rate", "cut off"), ("return_mean", "return")]
    rows = ["| model | decoding | " + " | ".join(title for _key, title in columns) + " |",
            "|" + " --- |" * (len(columns) + 2)]
    for label, numbers in (("SFT start", before), ("PPO result", after)):
        for decoding in ("greedy", "sampled"):
            entry = numbers[decoding]
            cells = ["-" if entry.get(key) is None else f"{entry[key]:.3f}" for key, _title in columns]
            rows.append(f"| {label} | {decoding} | " + " | ".join(cells) + " |")
    return rows


def transcripts(before_path: Path, after_path: Path) -> list[str]:
    """The first held-out episode the SFT start failed (else the first), as both models played it (greedy)."""
    def greedy(path: Path) -> list[dict]:
        return [row for row in map(json.loads, path.open(encoding="utf-8")) if row["decoding"] == "greedy"]

    old, new = greedy(before_path), greedy(after_path)
    index = next((i for i, row in enumerate(old) if not row["success"]), 0)
    lines: list[str] = []
    for label, row in (("SFT start", old[index]), ("PPO result", new[index])):
        lines += [f"{label} (success: {row['success']}):", "", "```"]
        lines += [f"{message['role']:>9}: {message['content']}" for message in row["transcript"]]
        lines += ["```", ""]
    return lines
