"""Scoring a model on a dataset split with the configured rewards (`ppo-core eval`).

For each decoding (``greedy``: argmax; ``sampled``: the generation section's temperature/top-k/top-p with a
generator seeded by ``train.seed``) every record of the split is answered once, through the same prompt
rendering, left padding and KV-cache sampler as a PPO rollout. The numbers per decoding:

- ``rewards``: the mean of each configured reward over the samples it scored (abstentions left out);
- ``reward_total``: the mean weighted total (the composer's, as PPO sees it), when rewards are configured;
- ``exact_match``: the share of samples whose response equals an accepted solution -- the ``exact_match``
  reward's values when that reward is configured (with its own normalisation options), otherwise
  :func:`normalise` equality (leading/trailing whitespace stripped, as the reward does by default);
- ``length_mean`` (response tokens, eos included) and ``eos_rate``;
- with an environment (``environment:``), each record is an episode played to its end as in PPO, the rewards
  score the finished episode, and ``success_rate``, ``return_mean`` (the turn rewards' sum), ``turns_mean``,
  ``tool_calls`` and ``truncated_rate`` join the numbers (``length_mean`` and ``eos_rate`` are then of the last turn).

Everything is deterministic: the same model and config give the same numbers and samples twice.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import torch
from torch import nn

from ..config import RunConfig
from ..data.prompts import encode_records
from ..data.stream import take_records
from ..errors import DataError, UserError
from ..modeling.loading import fit_to_context, load_causal_lm, load_tokenizer, resolve_device
from ..plugin.contract import Record, RunContext, Sample
from ..plugin.loading import load_plugins
from ..ppo.environment import build_dataset, build_environment, dataset_label
from ..ppo.episodes import EpisodeRunner
from ..ppo.rollout import sample_prompts
from ..rewards.composer import Composer, build_composer
from ..runtime.checkpoints import check_output_location, write_file_atomically

DECODINGS = ("greedy", "sampled")
EXACT_MATCH = "exact_match"
EPISODE_NUMBERS = ("success_rate", "return_mean", "turns_mean", "tool_calls", "truncated_rate")  # env/<name> of the episodes
SAMPLES_FILE = "eval_samples.jsonl"
NUMBERS_FILE = "eval.json"


def normalise(text: str) -> str:
    """What 'equal' means for the built-in exact match (the ``exact_match`` reward's default: strip)."""
    return text.strip()


def string_match(sample: Sample) -> Optional[float]:
    """1.0 if the response equals one of the solutions after :func:`normalise`; None without a solution."""
    if not sample.solutions:
        return None
    answer = normalise(sample.response)
    return 1.0 if any(answer == normalise(solution) for solution in sample.solutions) else 0.0


def _mean(values: Iterable[Optional[float]]) -> Optional[float]:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


@torch.no_grad()
def generate(model: nn.Module, tokenizer, records: Sequence[Record], config: RunConfig, device: torch.device,
             greedy: bool, generator: Optional[torch.Generator], episodes: Optional[EpisodeRunner] = None
             ) -> tuple[list[Sample], dict[str, Any]]:
    """Answer every record once, as the PPO rollout would (prompt ids, left padding, sampler, stop at eos), in
    chunks of ``generation.batch_size`` (default: the rollout batch size); with ``episodes``, play each record's
    episode to its end. The samples, and the episodes' numbers (:data:`EPISODE_NUMBERS`, ``successes``)."""
    generation = eval_generation(config)
    if episodes is None:
        encoded = encode_records(records, tokenizer, config.data)
        return sample_prompts(model, encoded, tokenizer, generation, generator, greedy, device), {}
    encoded, states = episodes.reset(records)
    played = episodes.play(model, encoded, states, generator, greedy)
    numbers = {name: played.stats[f"env/{name}"] for name in EPISODE_NUMBERS}
    return played.samples, {**numbers, "successes": played.successes}


def eval_generation(config: RunConfig):
    """The generation section eval samples with: chunks of the rollout batch size unless set."""
    return config.generation.model_copy(
        update={"batch_size": config.generation.batch_size or config.ppo.rollout_batch_size})


def score(samples: Sequence[Sample], composer: Composer, played: Optional[dict[str, Any]] = None
          ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The numbers of one decoding and one row per sample (``played``: an environment's episode numbers)."""
    played = played or {}
    composition = composer(samples) if composer.terms else None
    values = composition.values if composition else {}
    if EXACT_MATCH in values:
        exact, source = values[EXACT_MATCH], f"reward:{EXACT_MATCH}"
    else:
        exact, source = [string_match(sample) for sample in samples], "string"
    lengths = [len(sample.response_ids) + (sample.stop_reason == "eos") for sample in samples]
    numbers = {
        "exact_match": _mean(exact),
        "exact_match_source": source,
        "rewards": {name: _mean(reward_values) for name, reward_values in values.items()},
        "reward_total": _mean(composition.totals) if composition else None,
        "length_mean": _mean(lengths),
        "eos_rate": _mean(float(sample.stop_reason == "eos") for sample in samples),
        **{name: played[name] for name in EPISODE_NUMBERS if name in played},
    }
    successes = played.get("successes")
    rows = [
        {
            "prompt": sample.prompt,
            "response": sample.response,
            "solution": sample.solution,
            "stop_reason": sample.stop_reason,
            "exact_match": exact[i],
            "rewards": {name: reward_values[i] for name, reward_values in values.items()},
            "reward_total": composition.totals[i] if composition else None,
            **({"success": successes[i], "turns": list(sample.turns),
                "transcript": [message.model_dump() for message in sample.transcript]} if successes else {}),
        }
        for i, sample in enumerate(samples)
    ]
    return numbers, rows


def evaluate_records(model: nn.Module, tokenizer, records: Sequence[Record], config: RunConfig, composer: Composer,
                     device: torch.device, decodings: Sequence[str] = DECODINGS, seed: Optional[int] = None,
                     episodes: Optional[EpisodeRunner] = None) -> dict[str, Any]:
    """Score ``model`` on ``records`` (with ``episodes``: their environment's episodes): ``{"numbers":
    {decoding: {...}}, "samples": [row, ...]}``."""
    unknown = [d for d in decodings if d not in DECODINGS]
    if unknown:
        raise UserError(f"eval: unknown decoding(s) {', '.join(unknown)}; known: {', '.join(DECODINGS)}")
    was_training = model.training
    model.eval()
    numbers: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    try:
        for decoding in decodings:
            generator = None
            if decoding == "sampled":
                generator = torch.Generator(device=device)
                generator.manual_seed(config.train.seed if seed is None else seed)
            samples, played = generate(model, tokenizer, records, config, device, decoding == "greedy", generator,
                                       episodes)
            numbers[decoding], decoded = score(samples, composer, played)
            rows += [{"decoding": decoding, "index": i, **row} for i, row in enumerate(decoded)]
    finally:
        model.train(was_training)
    return {"numbers": numbers, "samples": rows}


def eval_metrics(numbers: dict[str, Any]) -> dict[str, float]:
    """:func:`evaluate_records`' numbers as metrics: ``eval/<decoding>/<number>``, ``eval/<decoding>/reward/<name>``
    (numbers without a value left out)."""
    metrics: dict[str, float] = {}
    for decoding in (d for d in DECODINGS if d in numbers):
        entry, prefix = numbers[decoding], f"eval/{decoding}/"
        values = {key: entry.get(key) for key in ("exact_match", "reward_total", "length_mean", "eos_rate",
                                                  *EPISODE_NUMBERS)}
        values.update({f"reward/{name}": value for name, value in entry["rewards"].items()})
        metrics.update({prefix + key: float(value) for key, value in values.items() if value is not None})
    return metrics


def evaluate_during_training(model: nn.Module, tokenizer, records: Sequence[Record], config: RunConfig,
                             composer: Composer, device: torch.device, episodes: Optional[EpisodeRunner] = None
                             ) -> dict[str, float]:
    """The held-out ``records`` scored greedy and sampled (``train.eval_every``), as :func:`eval_metrics`.

    The composer's running statistics (``normalize: true``) are put back afterwards: evaluating must not move
    the normalisation the training rewards see."""
    state = composer.state_dict()
    try:
        result = evaluate_records(model, tokenizer, records, config, composer, device, episodes=episodes)
    finally:
        composer.load_state_dict(state)
    return eval_metrics(result["numbers"])


def evaluate_model(config: RunConfig, model_dir: Union[str, Path], split: str = "eval",
                   samples: Optional[int] = None, out: Union[str, Path, None] = None,
                   numbers_out: Union[str, Path, None] = None, decodings: Sequence[str] = DECODINGS,
                   seed: Optional[int] = None, extra_plugins: Iterable = (), source: str = "config"
                   ) -> dict[str, Any]:
    """Score the model in ``model_dir`` (its own tokenizer) on ``split`` of the config's dataset (or, with an
    environment and no dataset, of the environment's own episodes).

    Returns the numbers: ``{"model", "split", "records", "seed", "generation", "greedy": {...},
    "sampled": {...}}``. ``out`` (if given) receives one JSON line per sample and decoding; ``numbers_out``
    (if given) the returned numbers as JSON.
    """
    if split not in ("train", "eval"):
        raise UserError(f"eval: split must be 'train' or 'eval', got {split!r}")
    for path, what in ((out, "eval: the samples file"), (numbers_out, "eval: the numbers file")):
        if path is not None:
            check_output_location(Path(path), what)  # before any compute, which would be lost
    config = fit_to_context(config, str(model_dir), source, "eval")
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    device = resolve_device(config.model.device)
    plugins = load_plugins(config.plugins.allow, config.plugins.block, extra=extra_plugins)
    tokenizer = load_tokenizer(str(model_dir), config.model.trust_remote_code, field="--model")
    context = RunContext(device=str(device), seed=config.train.seed, tokenizer=tokenizer, policy_path=str(model_dir),
                         trust_remote_code=config.model.trust_remote_code)
    dataset = build_dataset(config, plugins.registry, context, source)
    with build_composer(config.rewards, plugins.registry, context, source) as composer, \
            eval_episodes(config, plugins, context, tokenizer, source) as episodes:  # their workers stop here
        records = take_records(dataset, split, samples)
        if not records:
            raise DataError(f"{source}: the {split} split of {dataset_label(config)} has no records")
        model = load_causal_lm(str(model_dir), config.model.trust_remote_code, tokenizer, field="--model").to(device)
        seed = config.train.seed if seed is None else seed
        result = evaluate_records(model, tokenizer, records, config, composer, device, decodings, seed, episodes)
    gen = config.generation
    numbers = {
        "model": str(model_dir),
        "dataset": config.data.dataset or f"environment:{config.environment.name}",
        "split": split,
        "records": len(records),
        "seed": seed,
        "generation": {"max_new_tokens": gen.max_new_tokens, "temperature": gen.temperature, "top_k": gen.top_k,
                       "top_p": gen.top_p},
        **result["numbers"],
    }
    if out is not None:
        write_samples(Path(out), result["samples"])
    if numbers_out is not None:
        text = json.dumps(numbers, indent=2) + "\n"
        write_file_atomically(Path(numbers_out), lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return numbers


@contextmanager
def eval_episodes(config: RunConfig, plugins, context: RunContext, tokenizer, source: str
                  ) -> Iterator[Optional[EpisodeRunner]]:
    """The configured environment's episode runner (None without one); its worker stops on leaving."""
    if config.environment is None:
        yield None
        return
    environment = build_environment(config.environment, plugins.registry, context, source)
    runner = EpisodeRunner(environment, config.environment, config.data, eval_generation(config), tokenizer)
    try:
        yield runner
    finally:
        runner.close()


def write_samples(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """One JSON line per row, atomically: a reader never sees half a file, a failed write leaves the old one."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")

    write_file_atomically(path, write)


def format_table(numbers: dict[str, Any]) -> str:
    """A small fixed-width table: one row per decoding, one column per number."""
    decodings = [d for d in DECODINGS if d in numbers]
    reward_names = sorted({name for d in decodings for name in numbers[d]["rewards"]})
    columns = ["exact_match", *(f"reward/{n}" for n in reward_names)]
    if any(numbers[d]["reward_total"] is not None for d in decodings):
        columns.append("reward_total")
    columns += ["length_mean", "eos_rate"]
    columns += [name for name in EPISODE_NUMBERS if any(name in numbers[d] for d in decodings)]

    def cell(decoding: str, column: str) -> str:
        entry = numbers[decoding]
        value = entry["rewards"].get(column[7:]) if column.startswith("reward/") else entry.get(column)
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"

    widths = [max(len("decoding"), *(len(d) for d in decodings))] + [max(len(c), 6) for c in columns]
    lines = ["  ".join(text.ljust(width) for text, width in zip(["decoding", *columns], widths)).rstrip()]
    for decoding in decodings:
        cells = [decoding, *(cell(decoding, c) for c in columns)]
        lines.append("  ".join(text.ljust(width) for text, width in zip(cells, widths)).rstrip())
    source = numbers[decodings[0]]["exact_match_source"] if decodings else "string"
    header = (f"{numbers['model']} on {numbers['dataset']}/{numbers['split']} ({numbers['records']} records, "
              f"temperature {numbers['generation']['temperature']}, seed {numbers['seed']}; "
              f"exact_match from {source})")
    return "\n".join([header, *lines])
