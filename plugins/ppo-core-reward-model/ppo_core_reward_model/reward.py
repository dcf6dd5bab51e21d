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

An ensemble: ``path`` may list several directories (e.g. ``ppo-core train-reward`` run with different
``train.seed``). The score is the mean of the members' scores, each normalised with its own gain and bias (raw
with ``normalize: false``). Each member is loaded and checked as a single directory is, and decides zero extra
forward for itself: a member on the policy's frozen backbone reads the reference hidden states, every other
member runs its own backbone (one forward per member and batch).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal, Optional, Sequence, Union

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ppo_core import HiddenStateReward, RunContext, Sample
from ppo_core.reward_model import (
    RewardModel,
    RewardModelError,
    RewardModelInfo,
    load_reward_model,
    read_reward_model_info,
    resolve_reference,
    tokenizers_compatible,
)

__all__ = ["RewardModelMember", "RewardModelOptions", "RewardModelReward"]


class RewardModelOptions(BaseModel):
    """Options of the reward ``reward_model``."""

    model_config = ConfigDict(extra="forbid")

    path: Union[str, list[str]] = Field(
        description="The reward model directory (from `ppo-core train-reward`), or a list of them: an ensemble "
        "scoring the mean of its members' scores.")
    batch_size: int = Field(32, gt=0, description="Samples per forward pass of the reward model.")
    normalize: bool = Field(True, description="Apply the stored normalisation gain * raw + bias (mean 0, std 1 on "
                            "the starting policy's responses; each member its own); false gives the raw head output.")
    zero_extra_forward: Literal["auto", "off"] = Field(
        "auto", description="`auto`: read the PPO engine's reference hidden states instead of running the "
        "backbone, when the head sits on the frozen backbone of the policy's starting checkpoint; `off`: always "
        "run the reward model's own backbone.")

    @field_validator("zero_extra_forward", mode="before")
    @classmethod
    def _yaml_off(cls, value):
        # YAML 1.1 reads an unquoted `off` as false
        return "off" if value is False else value

    @field_validator("path")
    @classmethod
    def _directories(cls, value):
        paths = value if isinstance(value, list) else [value]
        if not paths:
            raise ValueError("an empty list names no reward model directory")
        if "" in paths:
            raise ValueError("a directory is an empty string")
        twice = sorted({path for path in paths if paths.count(path) > 1})
        if twice:
            raise ValueError(f"lists {', '.join(twice)} more than once")
        return value

    @property
    def paths(self) -> list[str]:
        return self.path if isinstance(self.path, list) else [self.path]


class RewardModelMember:
    """One reward model directory: its head, its backbone when it needs one, and whether it reads the engine's
    reference hidden states (decided at init, see the module docstring)."""

    def __init__(self, directory: Path, where: str, options: RewardModelOptions, context: RunContext):
        self.directory, self.where, self.options, self.context = directory, where, options, context
        try:
            self.info: RewardModelInfo = read_reward_model_info(directory)
            # the head and tokenizer only; the backbone follows when (and if) it is needed
            self.model: RewardModel = load_reward_model(directory, context.device, with_backbone=False,
                                                        allow_remote_code=context.trust_remote_code)
        except RewardModelError as error:
            raise RewardModelError(f"{where}: {error}") from None
        self.same_vocab = tokenizers_compatible(context.tokenizer, self.model.tokenizer)
        self.reads_reference_hidden, self.zero_extra_forward_reason = self._zero_extra_forward()
        if not self.reads_reference_hidden:
            self.load_backbone()

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

    def load_backbone(self) -> RewardModel:
        if self.model.backbone is None:
            try:
                self.model = load_reward_model(self.directory, self.context.device,
                                               allow_remote_code=self.context.trust_remote_code)
            except RewardModelError as error:
                raise RewardModelError(f"{self.where}: {error}") from None
        return self.model

    def __call__(self, samples: Sequence[Sample]) -> torch.Tensor:
        """This member's scores from its own forward pass: a CPU float tensor [N]."""
        return self.load_backbone().score_samples(samples, self.options.batch_size, normalize=self.options.normalize,
                                                  same_vocab=self.same_vocab)

    def score_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        if hidden.size(1) != self.info.hidden_size:
            raise ValueError(f"{self.where}: expected reference hidden states of shape [{hidden.size(0)}, "
                             f"{self.info.hidden_size}], got {list(hidden.shape)}")
        return self.model.score_hidden(hidden, normalize=self.options.normalize).float().cpu()


class RewardModelReward(HiddenStateReward):
    """A learned reward: backbone + MLP head, or the mean of several (see the module docstring)."""

    name: ClassVar[str] = "reward_model"
    Options: ClassVar[type[BaseModel]] = RewardModelOptions

    def __init__(self, options: RewardModelOptions, context: RunContext = RunContext()):
        super().__init__(options, context)
        single = not isinstance(options.path, list)
        self.members = [
            RewardModelMember(Path(path).expanduser(),
                              f"reward '{self.name}' option path" + ("" if single else f"[{index}] ({path})"),
                              options, context)
            for index, path in enumerate(options.paths)]
        # the engine hands reference hidden states when any member reads them; the others run their own forward
        self.reads_reference_hidden = any(member.reads_reference_hidden for member in self.members)
        reasons = [member.zero_extra_forward_reason for member in self.members]
        self.zero_extra_forward_reason = reasons[0] if single else "; ".join(
            f"path[{index}]: {reason}" for index, reason in enumerate(reasons))

    def __call__(self, samples: Sequence[Sample]) -> list[Optional[float]]:
        if not samples:
            return []
        return self._mean([member(samples) for member in self.members])

    @torch.no_grad()
    def score_hidden(self, samples: Sequence[Sample], hidden: torch.Tensor) -> list[Optional[float]]:
        """The members' mean score: from the reference model's final hidden states [B, H] for the members that
        read them, from their own forward for the others."""
        if hidden.dim() != 2 or hidden.size(0) != len(samples):
            raise ValueError(f"expected reference hidden states of shape [{len(samples)}, H], "
                             f"got {list(hidden.shape)}")
        return self._mean([member.score_hidden(hidden) if member.reads_reference_hidden else member(samples)
                           for member in self.members])

    @staticmethod
    def _mean(scores: list[torch.Tensor]) -> list[Optional[float]]:
        return torch.stack(scores).mean(dim=0).tolist()
