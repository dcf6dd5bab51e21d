"""The reward ``reward_model``: scores responses with a reward model directory written by
``ppo-core train-reward`` (or :func:`ppo_core.reward_model.save_reward_model`).

Each sample's token sequence is the engine's: ``tokenizer(sample.prompt)["input_ids"]`` (special tokens
included, e.g. a leading bos), then ``sample.response_ids``, then eos when ``sample.stop_reason == "eos"``.
Batches are right-padded and the score is read at each sequence's last real token.

Zero extra forward: the reward is a :class:`ppo_core.HiddenStateReward`. When the head was trained on the
*frozen* backbone of the checkpoint the policy starts from (the directory's backbone path equals the run's
``model.path``, both resolved) and the run's tokenizer has the reward model's vocabulary, the instance declares
``reads_reference_hidden`` at init: the engine then hands :meth:`RewardModelReward.score_hidden` the frozen
reference model's final hidden states at each sample's last real token, which are exactly what the backbone
would compute, and no forward pass of the reward model runs (docs/design.md, D10). A head reading every token
(``train.pool: mean`` or ``sum``) runs its own backbone: the engine hands only the last token's state.
``zero_extra_forward: off`` turns this off (the backbone is then loaded and run on every batch).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal, Optional, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ppo_core import HiddenStateReward, RunContext, Sample
from ppo_core.reward_model import (
    RewardModel,
    RewardModelError,
    load_reward_model,
    read_reward_model_info,
    resolve_reference,
    tokenizers_compatible,
)

__all__ = ["RewardModelOptions", "RewardModelReward"]


class RewardModelOptions(BaseModel):
    """Options of the reward ``reward_model``."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1, description="The reward model directory (from `ppo-core train-reward`).")
    batch_size: int = Field(32, gt=0, description="Samples per forward pass of the reward model.")
    normalize: bool = Field(True, description="Apply the stored normalisation gain * raw + bias (mean 0, std 1 on "
                            "the starting policy's responses); false gives the raw head output.")
    zero_extra_forward: Literal["auto", "off"] = Field(
        "auto", description="`auto`: read the PPO engine's reference hidden states instead of running the "
        "backbone, when the head sits on the frozen backbone of the policy's starting checkpoint; `off`: always "
        "run the reward model's own backbone.")

    @field_validator("zero_extra_forward", mode="before")
    @classmethod
    def _yaml_off(cls, value):
        # YAML 1.1 reads an unquoted `off` as false
        return "off" if value is False else value


class RewardModelReward(HiddenStateReward):
    """A learned reward: backbone + MLP head on the last real token (see the module docstring)."""

    name: ClassVar[str] = "reward_model"
    Options: ClassVar[type[BaseModel]] = RewardModelOptions

    def __init__(self, options: RewardModelOptions, context: RunContext = RunContext()):
        super().__init__(options, context)
        self.directory = Path(options.path).expanduser()
        self.device = torch.device(context.device)
        try:
            self.info = read_reward_model_info(self.directory)
            # the head and tokenizer only; the backbone follows when (and if) it is needed
            self.model: RewardModel = load_reward_model(self.directory, self.device, with_backbone=False,
                                                        allow_remote_code=context.trust_remote_code)
        except RewardModelError as error:
            raise RewardModelError(f"reward '{self.name}' option path: {error}") from None
        self.same_vocab = tokenizers_compatible(context.tokenizer, self.model.tokenizer)
        self.reads_reference_hidden, self.zero_extra_forward_reason = self._zero_extra_forward()
        if not self.reads_reference_hidden:
            self._load_backbone()

    def _zero_extra_forward(self) -> tuple[bool, str]:
        """Whether the engine's reference hidden states are this head's input, and why (not)."""
        if self.options.zero_extra_forward == "off":
            return False, "zero_extra_forward: off"
        if self.info.pool != "last":
            return False, (f"the head reads every token's hidden state (pool: {self.info.pool}); the engine "
                           f"hands the last token's only")
        if not self.info.backbone.frozen:
            return False, "the reward model's backbone was trained, so it is not the policy's starting checkpoint"
        if self.context.policy_path is None:
            return False, "the run's policy path is unknown"
        backbone = self.model.backbone_path
        if resolve_reference(backbone) != resolve_reference(self.context.policy_path):
            return False, (f"the head's backbone {backbone!r} is not the policy's starting checkpoint "
                           f"{resolve_reference(self.context.policy_path)!r}")
        if not self.same_vocab:
            return False, "the run's tokenizer has a different vocabulary from the reward model's"
        return True, f"reads the reference model's hidden states (frozen backbone {backbone!r} is the policy's start)"

    def _load_backbone(self) -> RewardModel:
        if self.model.backbone is None:
            try:
                self.model = load_reward_model(self.directory, self.device,
                                               allow_remote_code=self.context.trust_remote_code)
            except RewardModelError as error:
                raise RewardModelError(f"reward '{self.name}' option path: {error}") from None
        return self.model

    def __call__(self, samples: Sequence[Sample]) -> list[Optional[float]]:
        if not samples:
            return []
        model = self._load_backbone()
        scores = model.score_samples(samples, self.options.batch_size, normalize=self.options.normalize,
                                     same_vocab=self.same_vocab)
        return scores.tolist()

    @torch.no_grad()
    def score_hidden(self, samples: Sequence[Sample], hidden: torch.Tensor) -> list[Optional[float]]:
        """head(hidden) (+ normalisation) from the reference model's final hidden states [B, H]."""
        if hidden.dim() != 2 or hidden.size(0) != len(samples) or hidden.size(1) != self.info.hidden_size:
            raise ValueError(f"expected reference hidden states of shape [{len(samples)}, {self.info.hidden_size}], "
                             f"got {list(hidden.shape)}")
        return self.model.score_hidden(hidden, normalize=self.options.normalize).float().cpu().tolist()
