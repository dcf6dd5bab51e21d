"""`ppo-core demo`: the whole pipeline on an embedded default, ending in a report.

init-model -> SFT warm start on a synthetic task -> a reward model trained on preference pairs made from that
task (a head on the SFT model's frozen backbone, so PPO reads it from the reference forward) -> PPO with the
composer mixing the learned reward, edit distance, repetition penalty and exact match -> held-out evaluation
of the SFT start and the PPO result -> report.md with a plot and sample responses.

The configs are plain run configs; ``examples/demo/*.yaml`` are exactly :func:`demo_configs` for
``runs/demo`` (a test keeps them in step).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Optional, Sequence

from ..errors import UserError
from ..runtime.rundir import check_replaceable

SEED = 0
TASK = {"dataset": "reverse", "options": {"size": 2000, "eval_size": 200, "min_len": 2, "max_len": 4}}
QUICK = {  # the reduced size the test suite runs, so the pipeline cannot rot
    "sft": ["sft.steps=20"],
    "reward": ["train.epochs=2", "normalization.prompts=8", "data.options.size=64"],
    "ppo": ["train.updates=2", "ppo.rollout_batch_size=16", "ppo.minibatch_size=8"],
    "eval_records": 16,
}
REPORT_DIR = "report"
#: what a demo directory holds; --overwrite removes nothing else
DEMO_ENTRIES = {"model", "sft", "reward-model", "ppo", REPORT_DIR}


def demo_configs(out: str = "runs/demo", seed: int = SEED) -> dict[str, dict[str, Any]]:
    """The three stage configs (sft, reward, ppo) writing under ``out``."""
    model, sft_dir, reward_dir = f"{out}/model", f"{out}/sft", f"{out}/reward-model"
    start = f"{sft_dir}/final"
    generation = {"max_new_tokens": 6, "temperature": 1.0}
    rule_rewards = [
        {"name": "exact_match", "weight": 1.0},
        {"name": "edit_distance", "weight": 1.0},
        {"name": "repetition_penalty", "weight": 0.1},
    ]
    sft = {
        "model": {"path": model},
        "data": TASK,
        "rewards": rule_rewards,
        "generation": generation,
        "optim": {"lr": 3.0e-3, "schedule": "constant", "warmup_steps": 20},
        "train": {"seed": seed, "output_dir": sft_dir},
        "sft": {"steps": 330, "batch_size": 32, "log_every": 25},
    }
    reward = {
        "model": {"path": start},
        # every corruption (substitute, swap, shuffle, insert, delete): with insertions beside the deletions the
        # head cannot learn "longer is better" (benchmarks/README.md, "reward_model_accuracy.py")
        "data": {"dataset": TASK["dataset"], "options": {**TASK["options"], "eval_size": 0},
                 "pairs_per_record": 2, "seed": seed},
        "train": {"train_backbone": False, "epochs": 20, "lr": 3.0e-3, "batch_size": 64, "seed": seed},
        "normalization": {"source": "policy", "prompts": 128, "seed": seed, **generation},
        "output_dir": reward_dir,
    }
    ppo = {
        "model": {"path": start, "critic": "shared"},
        "data": TASK,
        "rewards": [{"name": "reward_model", "weight": 0.01, "options": {"path": reward_dir}}, *rule_rewards],
        "ppo": {"rollout_batch_size": 64, "minibatch_size": 16, "epochs": 4, "kl": {"coef": 0.01}},
        "generation": generation,
        "optim": {"lr": 1.0e-3, "schedule": "linear"},
        "train": {"seed": seed, "updates": 110, "output_dir": f"{out}/ppo"},
    }
    return {"sft": sft, "reward": reward, "ppo": ppo}


def run_demo(out: str = "runs/demo", quick: bool = False, overwrite: bool = False, seed: int = SEED) -> Path:
    """Run every stage; returns the report's path."""
    from ..config import load_config
    from ..config.train_reward import TrainRewardConfig
    from ..modeling.tiny import init_model
    from .sft import train_sft
    from .train import train
    from .train_reward import run_train_reward

    root = clear_demo_dir(out, overwrite, DEMO_ENTRIES)
    configs = demo_configs(out, seed)

    stage("1/5 init-model: a character-level tokenizer and a tiny GPT-2")
    init_model(configs["sft"]["model"]["path"], "tiny", seed=seed)

    stage("2/5 sft: supervised warm start on the task's solutions")
    sft_config = load_config(None, QUICK["sft"] if quick else [], base=configs["sft"])
    train_sft(sft_config, source="demo sft config")

    stage("3/5 train-reward: a reward head on the SFT model's frozen backbone, from preference pairs")
    reward_data = _with_overrides(configs["reward"], QUICK["reward"] if quick else [])
    reward_config = TrainRewardConfig.model_validate(reward_data)
    outcome = run_train_reward(reward_config, source="demo reward config", progress=epoch_progress(reward_config))
    accuracy = outcome.result.metrics["held_out_accuracy"]
    kinds = {key.split("/", 1)[1]: value for key, value in outcome.result.metrics.items()
             if key.startswith("held_out_accuracy/")}

    stage("4/5 train: PPO against the weighted mix of rewards")
    ppo_config = load_config(None, QUICK["ppo"] if quick else [], base=configs["ppo"])
    final = train(ppo_config, source="demo ppo config")

    stage("5/5 eval: held-out numbers for the SFT start and the PPO result")
    report_dir = root / REPORT_DIR
    before, after, metrics = evaluate_start_and_result(ppo_config, configs["ppo"]["model"]["path"], final,
                                                       report_dir, QUICK["eval_records"] if quick else None)
    report = write_report(report_dir, metrics, before, after, accuracy, ppo_config, seed, kinds)
    print(f"\nreport: {report}")
    return report


def clear_demo_dir(out: str, overwrite: bool, entries: set[str]) -> Path:
    """The demo's directory, emptied with --overwrite when it holds a demo's ``entries`` only."""
    root = Path(out)
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise UserError(f"demo: {root} already holds a demo run; pass --overwrite to start over")
        check_replaceable(root, entries, "demo: --out")
        shutil.rmtree(root)
    return root


def evaluate_start_and_result(ppo_config, start: str, final: Path, report_dir: Path, limit: Optional[int]):
    """The held-out numbers of the SFT start and of the PPO result (their samples and numbers files written to
    ``report_dir``) and the PPO run's metrics lines."""
    from .evaluate import evaluate_model

    before = evaluate_model(ppo_config, start, samples=limit, out=report_dir / "samples_sft.jsonl",
                            numbers_out=report_dir / "eval_sft.json")
    after = evaluate_model(ppo_config, final, samples=limit, out=report_dir / "samples_ppo.jsonl",
                           numbers_out=report_dir / "eval_ppo.json")
    metrics = [json.loads(line) for line in (Path(ppo_config.train.output_dir) / "metrics.jsonl").open()]
    return before, after, metrics


def stage(title: str) -> None:
    print(f"\n== {title}", flush=True)


def epoch_progress(config):
    from ..runtime.metrics import Progress

    bar = Progress(config.train.epochs, label="epoch", keys=("loss",))

    def progress(entry: dict) -> None:
        bar.update(int(entry["epoch"]), {"loss": entry["loss"]})

    return progress


def _with_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    from ..config import apply_override

    data = json.loads(json.dumps(data))
    for assignment in overrides:
        apply_override(data, assignment)
    return data


# ---- the report ---------------------------------------------------------------------------------------
def write_report(directory: Path, metrics: list[dict], before: dict, after: dict, reward_accuracy: Optional[float],
                 config, seed: int, reward_accuracy_by_kind: Optional[dict] = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    names = [r.name for r in config.rewards]
    plot = plot_rewards(metrics, names, directory / "rewards.png")
    diagnostics = plot_diagnostics(metrics, directory / "diagnostics.png")
    lines = [
        "# ppo-core demo report",
        "",
        f"Task `{config.data.dataset}` {config.data.options}, seed {seed}, {len(metrics)} PPO updates of "
        f"{config.ppo.rollout_batch_size} rollouts. Reward model held-out pair accuracy: "
        f"{_with_kinds(reward_accuracy, reward_accuracy_by_kind)}.",
        "",
        "## Held-out metrics",
        "",
        *metrics_table(before, after),
        "",
        "## Rewards and KL over the PPO updates",
        "",
        f"![rewards]({plot.name})",
        "",
        "## Reward-hacking diagnostics",
        "",
        "Length drift (mean response length over the first update's), eos rate, and the learned reward's "
        "correlation with each rule reward on the same samples; a learned reward being gamed parts from the rules.",
        "",
        *diagnostics_table(metrics, {r.name: r.weight for r in config.rewards}),
        "",
        f"![diagnostics]({diagnostics.name})",
        "",
        "## Sample responses (greedy), before and after PPO",
        "",
        *sample_table(directory / "samples_sft.jsonl", directory / "samples_ppo.jsonl"),
        "",
    ]
    report = directory / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    return report


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def _with_kinds(accuracy: Optional[float], by_kind: Optional[dict]) -> str:
    """``0.730 (substitution 0.580, order 0.620, length 0.975)``: pair accuracy overall and per kind of pair."""
    kinds = ", ".join(f"{kind} {_fmt(value)}" for kind, value in (by_kind or {}).items())
    return _fmt(accuracy) + (f" ({kinds})" if kinds else "")


def metrics_table(before: dict, after: dict) -> list[str]:
    names = sorted(name for name in before["greedy"]["rewards"] if name != "exact_match")
    header = ["model", "decoding", "exact match", *names, "total", "length"]
    rows = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for label, numbers in (("SFT start", before), ("PPO result", after)):
        for decoding in ("greedy", "sampled"):
            entry = numbers[decoding]
            cells = [label, decoding, _fmt(entry["exact_match"]), *(_fmt(entry["rewards"].get(n)) for n in names),
                     _fmt(entry["reward_total"]), f"{entry['length_mean']:.2f}"]
            rows.append("| " + " | ".join(cells) + " |")
    return rows


def sample_table(before_path: Path, after_path: Path, count: int = 8) -> list[str]:
    def greedy(path: Path) -> list[dict]:
        rows = [json.loads(line) for line in path.open(encoding="utf-8")]
        return [row for row in rows if row["decoding"] == "greedy"][:count]

    rows = ["| prompt | solution | SFT start | PPO result |", "| --- | --- | --- | --- |"]
    for old, new in zip(greedy(before_path), greedy(after_path)):
        cells = [old["prompt"], str(old["solution"]), old["response"], new["response"]]
        rows.append("| " + " | ".join(f"`{c}`".replace("|", "\\|") for c in cells) + " |")
    return rows


def diagnostics_table(metrics: list[dict], reward_weights: dict[str, float], span: int = 10) -> list[str]:
    """The diagnostics over the first and the last ``span`` updates, and the divergence warnings the run printed."""
    from ..rewards.hacking import LEARNED_REWARDS, STEERING, HackingWatch

    warnings: list[str] = []
    watch = HackingWatch.for_rewards(reward_weights, warn=warnings.append)
    for line in metrics:
        watch(dict(line))
    keys = [("response/length_drift", "length drift"), ("response/eos_rate", "eos rate")]
    keys += [(f"reward/corr/{learned}/{rule}", f"corr({learned}, {rule})")
             for learned in reward_weights if learned in LEARNED_REWARDS
             for rule in reward_weights if rule not in LEARNED_REWARDS]
    rows = ["| updates | " + " | ".join(title for _key, title in keys) + " |", "|" + " --- |" * (len(keys) + 1)]
    for label, lines in ((f"first {span}", metrics[:span]), (f"last {span}", metrics[-span:])):
        rows.append(f"| {label} | " + " | ".join(_fmt(_mean(lines, key)) for key, _title in keys) + " |")
    if watch.learned:
        rows += ["", f"Divergence warnings (learned reward up, a rule reward down over {watch.window} updates): "
                     f"{len(warnings)}" + "".join(f"\n- {line.removeprefix('warning: ')}" for line in warnings)]
    else:
        rows += ["", f"No divergence watch: no learned reward carries {STEERING:.0%} of the weight (it rides along "
                     f"and cannot be gamed)."]
    return rows


def _mean(lines: list[dict], key: str) -> Optional[float]:
    values = [line[key] for line in lines if isinstance(line.get(key), (int, float))]
    return sum(values) / len(values) if values else None


def plot_diagnostics(metrics: list[dict], path: Path) -> Path:
    keys = sorted({key for line in metrics for key in line if key.startswith("reward/corr/")})
    panels = [("response/length_drift", "length drift (x first update)"), ("response/eos_rate", "eos rate")]
    return plot_panels(metrics, panels + [(key, key.removeprefix("reward/")) for key in keys], path)


def plot_rewards(metrics: list[dict], reward_names: Sequence[str], path: Path) -> Path:
    panels = [(f"reward/{name}", name) for name in reward_names] + [("reward/mean", "total (weighted)"),
                                                                    ("kl", "KL to the reference")]
    return plot_panels(metrics, panels, path)


def plot_panels(metrics: list[dict], panels: Sequence[tuple[str, str]], path: Path) -> Path:
    """One small plot per (metric key, title) over the PPO updates, three to a row."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("demo: the report's plot needs matplotlib; pip install 'ppo-core[report]'") from None
    updates = [m["update"] for m in metrics]
    columns = 3
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 2.8 * rows), squeeze=False)
    for axis, (key, title) in zip(axes.flat, panels):
        axis.plot(updates, [m.get(key) if m.get(key) is not None else float("nan") for m in metrics])
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("update", fontsize=8)
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(panels):]:
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


EXAMPLE_FILES = {"sft": "sft.yaml", "reward": "train-reward.yaml", "ppo": "ppo.yaml"}


def example_config_texts() -> dict[str, str]:
    """examples/demo/*.yaml: the demo's configs as files, runnable stage by stage from the repository root."""
    import yaml

    commands = {"sft": "ppo-core init-model runs/demo/model --size tiny && ppo-core sft examples/demo/sft.yaml",
                "reward": "ppo-core train-reward examples/demo/train-reward.yaml",
                "ppo": "ppo-core train examples/demo/ppo.yaml"}
    return {name: f"# The demo's {name} stage (ppo-core demo runs all of them):\n#   {commands[name]}\n"
                  + yaml.safe_dump(config, sort_keys=False)
            for name, config in demo_configs().items()}


if __name__ == "__main__":  # python -m ppo_core.commands.demo examples/demo
    import sys

    target = Path(sys.argv[1])
    target.mkdir(parents=True, exist_ok=True)
    for name, text in example_config_texts().items():
        (target / EXAMPLE_FILES[name]).write_text(text, encoding="utf-8")
