"""The demo's report.md: held-out numbers of the SFT start and the PPO result, plots of the PPO run, the
reward-hacking diagnostics and sample responses -- for one seed, or for several (mean, min-max and each seed)."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from ..errors import UserError

DECODINGS = ("greedy", "sampled")
DOMINANT = 0.5  # issue 18: a learned reward is the dominant term at half the total weight or more


@dataclass
class SeedRun:
    """One seed's pipeline, as the report reads it."""

    seed: int
    config: Any  # the PPO stage's RunConfig
    metrics: list[dict]  # the PPO run's metrics lines
    before: dict  # held-out numbers of the SFT start (evaluate_model's)
    after: dict  # ... and of the PPO result
    reward_accuracy: list[Optional[float]]  # each reward model member's held-out pair accuracy (one: no ensemble)
    reward_accuracy_by_kind: list[dict]  # ... and per kind of pair
    report_dir: Path  # where its samples_sft.jsonl / samples_ppo.jsonl are


def write_report(directory: Path, runs: Sequence[SeedRun]) -> Path:
    """report.md (and its plots) in ``directory`` for one seed's run, or over several seeds' runs."""
    directory.mkdir(parents=True, exist_ok=True)
    config, first = runs[0].config, runs[0]
    weights = {r.name: r.weight for r in config.rewards}
    by_seed = {f"seed {run.seed}": run.metrics for run in runs}
    plot = plot_rewards(by_seed, list(weights), directory / "rewards.png")
    diagnostics = plot_diagnostics(by_seed, directory / "diagnostics.png")
    seeds = ", ".join(str(run.seed) for run in runs)
    accuracy = "; ".join((f"seed {run.seed} " if len(runs) > 1 else "") + members_accuracy(run) for run in runs)
    lines = [
        "# ppo-core demo report",
        "",
        f"Task `{config.data.dataset}` {config.data.options}, seed{'s' if len(runs) > 1 else ''} {seeds}; "
        f"{len(first.metrics)} PPO updates of {config.ppo.rollout_batch_size} rollouts. Reward model held-out "
        f"pair accuracy: {accuracy}.",
        "",
        weights_line(weights),
        "",
        "## Held-out metrics",
        "",
        *(["Each cell: the mean over the seeds (min to max); then each seed's row.", ""] if len(runs) > 1 else []),
        *metrics_table(runs),
        "",
        change_line(runs),
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
    ]
    for run in runs:
        lines += [*([f"Seed {run.seed}:", ""] if len(runs) > 1 else []), *diagnostics_table(run.metrics, weights), ""]
    lines += [
        f"![diagnostics]({diagnostics.name})",
        "",
        f"## Sample responses (greedy{f', seed {first.seed}' if len(runs) > 1 else ''}), before and after PPO",
        "",
        *sample_table(first.report_dir / "samples_sft.jsonl", first.report_dir / "samples_ppo.jsonl"),
        "",
    ]
    report = directory / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    return report


def weights_line(weights: dict[str, float]) -> str:
    """Each reward's weight and share of the total, and whether the learned reward is the dominant term."""
    from ..rewards.hacking import LEARNED_REWARDS

    total = sum(abs(weight) for weight in weights.values())
    shares = ", ".join(f"`{name}` {weight:g} ({abs(weight) / total:.1%})" for name, weight in weights.items())
    learned = [name for name in weights if name in LEARNED_REWARDS]
    if not learned:
        return f"Rewards (weight, share of the total): {shares}."
    share = sum(abs(weights[name]) for name in learned) / total
    role = ("the dominant term: PPO follows the learned reward, the rule rewards are minor terms"
            if share >= DOMINANT else "a minor term: the rule rewards steer")
    return f"Rewards (weight, share of the total): {shares}. The learned reward is {role}."


def spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, min and max of one number over the seeds."""
    return {"mean": statistics.mean(values), "min": min(values), "max": max(values)}


def _over_seeds(values: Sequence[Optional[float]]) -> str:
    """``0.507 (0.415 to 0.595)`` over several seeds, the value alone for one."""
    known = [value for value in values if value is not None]
    if len(known) < 2:
        return _fmt(known[0] if known else None)
    numbers = spread(known)
    return f"{numbers['mean']:.3f} ({numbers['min']:.3f} to {numbers['max']:.3f})"


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def members_accuracy(run: SeedRun) -> str:
    """One reward model's held-out pair accuracy, or each ensemble member's (``member 1 0.990 (...), member 2 ...``)."""
    texts = [_with_kinds(accuracy, kinds) for accuracy, kinds in zip(run.reward_accuracy, run.reward_accuracy_by_kind)]
    if len(texts) == 1:
        return texts[0]
    return ", ".join(f"member {index} {text}" for index, text in enumerate(texts, 1))


def _with_kinds(accuracy: Optional[float], by_kind: Optional[dict]) -> str:
    """``0.730 (substitution 0.580, order 0.620, length 0.975)``: pair accuracy overall and per kind of pair."""
    kinds = ", ".join(f"{kind} {_fmt(value)}" for kind, value in (by_kind or {}).items())
    return _fmt(accuracy) + (f" ({kinds})" if kinds else "")


def metrics_table(runs: Sequence[SeedRun]) -> list[str]:
    """Per model and decoding: the numbers over the seeds, then (for several seeds) each seed's."""
    names = sorted(name for name in runs[0].before["greedy"]["rewards"] if name != "exact_match")
    columns = [("exact match", lambda entry: entry["exact_match"]),
               *((name, lambda entry, name=name: entry["rewards"].get(name)) for name in names),
               ("total", lambda entry: entry["reward_total"]), ("eos rate", lambda entry: entry["eos_rate"]),
               ("length", lambda entry: entry["length_mean"])]
    rows = ["| model | decoding | " + " | ".join(title for title, _get in columns) + " |",
            "|" + " --- |" * (len(columns) + 2)]
    for label, side in (("SFT start", "before"), ("PPO result", "after")):
        for decoding in DECODINGS:
            entries = [getattr(run, side)[decoding] for run in runs]
            cells = [_over_seeds([get(entry) for entry in entries]) for _title, get in columns]
            rows.append(f"| {label} | {decoding} | " + " | ".join(cells) + " |")
            if len(runs) > 1:
                rows += [f"| {label}, seed {run.seed} | {decoding} | "
                         + " | ".join(_fmt(get(entry)) for _title, get in columns) + " |"
                         for run, entry in zip(runs, entries)]
    return rows


def change_line(runs: Sequence[SeedRun]) -> str:
    """The PPO result against its SFT start: exact match in points, eos rate, length in percent."""
    parts = []
    for decoding in DECODINGS:
        lifts = [100 * (run.after[decoding]["exact_match"] - run.before[decoding]["exact_match"]) for run in runs]
        lengths = [100 * (run.after[decoding]["length_mean"] / run.before[decoding]["length_mean"] - 1)
                   for run in runs]
        eos = [run.after[decoding]["eos_rate"] for run in runs]
        parts.append(f"{decoding}: exact match {_signed(lifts, 'points')}, eos rate {_over_seeds(eos)}, "
                     f"length {_signed(lengths, '%')}")
    scope = f"mean over {len(runs)} seeds, min to max" if len(runs) > 1 else "seed " + str(runs[0].seed)
    return f"PPO result against its SFT start ({scope}): " + "; ".join(parts) + "."


def _signed(values: Sequence[float], unit: str) -> str:
    numbers = spread(values)
    text = f"{numbers['mean']:+.1f}{'' if unit == '%' else ' '}{unit}"
    return text + (f" ({numbers['min']:+.1f} to {numbers['max']:+.1f})" if len(values) > 1 else "")


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


Series = Union[list[dict], dict[str, list[dict]]]  # one run's metrics lines, or several runs' by label


def plot_diagnostics(metrics: Series, path: Path) -> Path:
    runs = _by_label(metrics)
    keys = sorted({key for lines in runs.values() for line in lines for key in line if key.startswith("reward/corr/")})
    panels = [("response/length_drift", "length drift (x first update)"), ("response/eos_rate", "eos rate")]
    return plot_panels(runs, panels + [(key, key.removeprefix("reward/")) for key in keys], path)


def plot_rewards(metrics: Series, reward_names: Sequence[str], path: Path) -> Path:
    panels = [(f"reward/{name}", name) for name in reward_names] + [("reward/mean", "total (weighted)"),
                                                                    ("kl", "KL to the reference")]
    return plot_panels(metrics, panels, path)


def _by_label(metrics: Series) -> dict[str, list[dict]]:
    return metrics if isinstance(metrics, dict) else {"": metrics}


def plot_panels(metrics: Series, panels: Sequence[tuple[str, str]], path: Path) -> Path:
    """One small plot per (metric key, title) over the PPO updates, three to a row; one line per run."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("demo: the report's plot needs matplotlib; pip install 'ppo-core[report]'") from None
    runs = _by_label(metrics)
    columns = 3
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 2.8 * rows), squeeze=False)
    for axis, (key, title) in zip(axes.flat, panels):
        for label, lines in runs.items():
            axis.plot([m["update"] for m in lines],
                      [m.get(key) if m.get(key) is not None else float("nan") for m in lines], label=label or None)
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("update", fontsize=8)
        axis.grid(alpha=0.3)
    if len(runs) > 1:
        axes.flat[0].legend(fontsize=7)
    for axis in list(axes.flat)[len(panels):]:
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
