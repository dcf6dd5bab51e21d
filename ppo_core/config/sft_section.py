"""The `sft:` section and its stop condition (`sft.stop_at`)."""

from __future__ import annotations

import math
import re
from typing import Any, Optional, Sequence

from pydantic import Field, ValidationInfo, field_validator

from ..errors import ConfigError, DataError
from .base import MAX_BATCH, MAX_TOKENS, Section, _must_divide

_STOP_AT = re.compile(r"^\s*(eval/(?:loss|exact_match|reward/\S+))\s*(>=|<=)\s*(\S+)\s*$")


def parse_stop_at(text: str) -> tuple[str, str, float]:
    """``"eval/exact_match >= 0.9"`` -> ``("eval/exact_match", ">=", 0.9)``; ValueError naming the form."""
    match = _STOP_AT.match(text)
    try:
        value = float(match.group(3)) if match else math.nan
    except ValueError:
        value = math.nan
    if not match or not math.isfinite(value):
        raise ValueError(f"{text!r} is not `<metric> >= <number>` or `<metric> <= <number>` with a metric of "
                         f"eval_every (eval/exact_match, eval/loss, eval/reward/<name>)")
    return match.group(1), match.group(2), value


def stop_condition_met(stop_at: str, metrics: dict) -> bool:
    """Whether ``metrics`` (an evaluation's line) meets ``stop_at``; a metric the line lacks never does."""
    name, operator, threshold = parse_stop_at(stop_at)
    value = metrics.get(name)
    if value is None or not math.isfinite(value):
        return False
    return value >= threshold if operator == ">=" else value <= threshold


def check_stop_can_fire(stop_at: Optional[str], dataset: str, eval_records: Sequence[Any], rewards: set[str],
                        source: str) -> None:
    """``stop_at`` names a metric the evaluations will log on ``eval_records`` (records with ``solutions``) and
    ``rewards`` (the configured rewards' names): otherwise it would silently never stop the run."""
    if stop_at is None:
        return
    metric = parse_stop_at(stop_at)[0]
    where = f"{source}: sft.stop_at: {metric} is measured on the eval split of dataset '{dataset}'"
    if not eval_records:
        raise DataError(f"{where}, which has no records")
    if metric == "eval/exact_match" and not any(record.solutions for record in eval_records):
        raise DataError(f"{where}, whose records carry no solution to match (stop on eval/loss instead)")
    reward = metric.removeprefix("eval/reward/")
    if reward != metric and reward not in rewards:
        raise ConfigError(f"{where}, by the reward '{reward}', which is not in `rewards` "
                          f"({', '.join(sorted(rewards)) or 'none configured'})")


def check_sft_options(config: Any, source: str) -> None:
    """``ppo-core sft`` trains every weight in fp32: the PPO run's memory options would be silently ignored (a
    full fine-tune where adapters were asked for), so they are refused."""
    ignored = [name for name, asked in (("model.lora", config.model.lora is not None),
                                        ("model.gradient_checkpointing", config.model.gradient_checkpointing),
                                        ("train.precision", config.train.precision != "fp32")) if asked]
    if ignored:
        raise ConfigError(f"{source}: {ignored[0]}: `ppo-core sft` trains every weight in fp32, without LoRA, "
                          f"gradient checkpointing or autocast (they are `ppo-core train`'s); unset it for sft")


class SFTConfig(Section):
    """`ppo-core sft`: supervised fine-tuning on the records' solutions (optim, data, model, train reused)."""

    steps: Optional[int] = Field(None, gt=0, description="Optimizer steps; unset: `epochs` passes over the "
                                 "train split.")
    epochs: float = Field(1.0, gt=0, description="Passes over the train split when `steps` is unset.")
    batch_size: int = Field(16, gt=0, le=MAX_BATCH, description="Records per optimizer step.")
    micro_batch_size: Optional[int] = Field(None, gt=0, le=MAX_BATCH, description="Records per forward/backward; "
                                            "gradients accumulate up to `batch_size`. Defaults to `batch_size`.")
    lr: Optional[float] = Field(None, gt=0, description="Peak learning rate; defaults to `optim.lr` (the rest "
                                "of `optim` -- warm-up, schedule, clipping -- applies as in PPO).")
    max_response_tokens: Optional[int] = Field(None, gt=0, le=MAX_TOKENS, description="Longest target (solution "
                                               "+ eos) in tokens, longer ones are cut; defaults to "
                                               "`generation.max_new_tokens`.")
    dropout: bool = Field(False, description="Keep the checkpoint's dropout (off by default, as in PPO).")
    log_every: int = Field(1, gt=0, description="Write a metrics line every N steps (the loss averaged over them).")
    eval_every: int = Field(0, ge=0, description="Every N steps and after the last, log the eval split's loss "
                            "and greedy exact match and reward means; 0: never.")
    eval_samples: Optional[int] = Field(None, gt=0, description="Eval records `eval_every` uses (the first N); "
                                        "unset: the whole eval split.")
    save_every: int = Field(0, ge=0, description="Checkpoint every N steps (0: only the final model).")
    stop_at: Optional[str] = Field(None, description="Stop early at the first evaluation (`eval_every`) that meets "
                                   "this condition, `<metric> >= <number>` or `<=`, on a metric evaluation logs: "
                                   "`eval/exact_match`, `eval/loss`, `eval/reward/<name>`; e.g. "
                                   "`eval/exact_match >= 0.9`. The final model is that step's. A metric the evaluations cannot log (no "
                                   "eval records, records without solutions, a reward not configured) is refused "
                                   "before the run starts.")
    output_dir: Optional[str] = Field(None, description="Run directory; defaults to `train.output_dir`.")

    @field_validator("stop_at")
    @classmethod
    def _stop_condition(cls, stop_at: Optional[str], info: ValidationInfo) -> Optional[str]:
        if stop_at is None:
            return None
        parse_stop_at(stop_at)
        if not info.data.get("eval_every"):
            raise ValueError("needs eval_every > 0: the condition is checked on the evaluations")
        return stop_at

    @field_validator("micro_batch_size")
    @classmethod
    def _micro_divides_batch(cls, micro: Optional[int], info: ValidationInfo) -> Optional[int]:
        return _must_divide(micro, "micro_batch_size", "batch_size", info)
