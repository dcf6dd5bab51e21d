"""The reward ``hf_reward_model``: any transformers ``AutoModelForSequenceClassification`` checkpoint (a local
directory or a hub id) as a reward, with its own tokenizer and chat template.

Each sample is re-rendered as text for the reward model: the conversation the prompt came from
(``sample.messages``, or the prompt text as one user turn) plus the response as the assistant's turn, through the
reward model tokenizer's chat template when it has one (and ``chat_template`` is on), else as plain text: the
turns joined by newlines, the response right after them (what the policy read and wrote). The score is the logit
of ``label`` (the only one when ``num_labels`` is 1), read by the model's own pooling (the last real token).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import ClassVar, Optional, Sequence, Union

import torch
from pydantic import BaseModel, ConfigDict, Field

from ppo_core import Reward, RunContext, Sample
from ppo_core.errors import ConfigError
from ppo_core.modeling.loading import model_context_length, resolve_device
from ppo_core.reward_model import RewardModelError
from ppo_core.reward_model.model import right_pad

__all__ = ["HubRewardModel", "HubRewardModelOptions"]


class HubRewardModelOptions(BaseModel):
    """Options of the reward ``hf_reward_model``."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1, description="A sequence-classification checkpoint: a directory or a hub id.")
    batch_size: int = Field(16, gt=0, description="Samples per forward pass.")
    max_length: Optional[int] = Field(None, gt=0, description="Longest input in tokens; a longer one keeps its last "
                                      "tokens (counted). Default: the checkpoint's context (config.json).")
    device: Optional[str] = Field(None, description="`cpu`, `cuda`, `cuda:1`...; default: the run's device.")
    label: Union[int, str, None] = Field(None, description="With num_labels > 1: the logit scored, by index or by "
                                         "name (config.json's id2label); with num_labels 1: unset or 0.")
    chat_template: bool = Field(True, description="Render with the reward model tokenizer's chat template when it "
                                "has one; false: plain text.")


class HubRewardModel(Reward):
    """A transformers sequence classifier as a reward (see the module docstring)."""

    name: ClassVar[str] = "hf_reward_model"
    Options: ClassVar[type[BaseModel]] = HubRewardModelOptions

    def __init__(self, options: HubRewardModelOptions, context: RunContext = RunContext()):
        super().__init__(options, context)
        try:
            self.device = resolve_device(options.device or context.device)
        except ConfigError as error:
            raise ConfigError(f"reward '{self.name}' option device: {str(error).split(': ', 1)[-1]}") from None
        refuse_remote_code(options.path, context.trust_remote_code, self.name)
        self.tokenizer, self.model = load_classifier(options.path, context.trust_remote_code, self.device, self.name)
        self.label = label_index(self.model.config, options.label, self.name)
        context_length = model_context_length(options.path)
        self.max_length = options.max_length or (context_length[0] if context_length else None)
        self.templated = bool(options.chat_template and getattr(self.tokenizer, "chat_template", None))
        #: samples whose text was longer than max_length (cut to its last tokens), over this reward's life
        self.truncated = 0

    def texts(self, samples: Sequence[Sample]) -> list[str]:
        """Each sample as the text the reward model reads."""
        return [render_for_reward_model(sample, self.tokenizer if self.templated else None) for sample in samples]

    def token_ids(self, samples: Sequence[Sample]) -> list[list[int]]:
        """The texts tokenized (a chat template writes its own special tokens), held to ``max_length``."""
        rows = [list(self.tokenizer(text, add_special_tokens=not self.templated)["input_ids"])
                for text in self.texts(samples)]
        for i, row in enumerate(rows):
            if self.max_length is not None and len(row) > self.max_length:
                if not self.truncated:
                    print(f"warning: reward '{self.name}': inputs longer than max_length ({self.max_length} tokens) "
                          f"keep their last tokens; the first had {len(row)}", file=sys.stderr)
                self.truncated += 1
                rows[i] = row[-self.max_length:]
        return rows

    @torch.no_grad()
    def __call__(self, samples: Sequence[Sample]) -> list[Optional[float]]:
        rows = self.token_ids(samples)
        pad = self.model.config.pad_token_id
        # without a pad token the model cannot find each row's last token in a padded batch: one row at a time
        size = self.options.batch_size if pad is not None else 1
        scores: list[Optional[float]] = []
        for start in range(0, len(rows), size):
            # right padding: each row keeps the positions it has alone, and the model pools its last real token
            input_ids, attention_mask = right_pad(rows[start:start + size], pad if pad is not None else 0)
            logits = self.model(input_ids=input_ids.to(self.device),
                                attention_mask=attention_mask.to(self.device)).logits
            scores.extend(logits[:, self.label].float().cpu().tolist())
        return scores


def render_for_reward_model(sample: Sample, tokenizer=None) -> str:
    """The sample's conversation plus its response as the assistant's turn: through ``tokenizer``'s chat template
    when given, else plain text (the turns joined by newlines, the response right after them)."""
    turns = ([message.model_dump() for message in sample.messages] if sample.messages
             else [{"role": "user", "content": sample.prompt}])
    if tokenizer is not None:
        return tokenizer.apply_chat_template([*turns, {"role": "assistant", "content": sample.response}],
                                             tokenize=False)
    return "\n".join(turn["content"] for turn in turns) + sample.response


def refuse_remote_code(path: str, trust_remote_code: bool, reward: str) -> None:
    """Only the run config turns remote code on: a local checkpoint whose config names its own code (``auto_map``)
    is refused before anything of it is loaded. (For a hub id, transformers itself refuses without the switch.)"""
    if trust_remote_code:
        return
    for name in ("config.json", "tokenizer_config.json"):
        file = Path(path).expanduser() / name
        try:
            asks = "auto_map" in json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if asks:
            raise RewardModelError(f"reward '{reward}' option path: {file}: auto_map: the checkpoint asks to run "
                                   f"the Python code shipped with it; refused, as the run config does not allow "
                                   f"remote code (model.trust_remote_code: true would)")


def load_classifier(path: str, trust_remote_code: bool, device: torch.device, reward: str):
    """(tokenizer, model in eval mode on ``device``, float32) of a sequence-classification checkpoint."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model, loading = AutoModelForSequenceClassification.from_pretrained(
            path, dtype=torch.float32, trust_remote_code=trust_remote_code, output_loading_info=True)
    except (OSError, ValueError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise RewardModelError(f"reward '{reward}' option path: cannot load a sequence classifier from {path!r}: "
                               f"{first_line}") from None
    missing = sorted(loading.get("missing_keys") or ())
    if missing:  # transformers would score with freshly initialised weights, e.g. a policy's missing `score` head
        raise RewardModelError(f"reward '{reward}' option path: {path!r} is not a trained sequence classifier: "
                               f"{', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''} not in the checkpoint "
                               f"(a causal LM, such as a policy checkpoint, has no classification head)")
    return tokenizer, model.to(device).eval()


def label_index(config, label: Union[int, str, None], reward: str) -> int:
    """The logit a score is read from: ``label`` by index or by name; the only one when num_labels is 1."""
    count = int(config.num_labels)
    names = {str(name): int(index) for index, name in (config.id2label or {}).items()}
    if label is None and count == 1:
        return 0
    if label is None:
        raise RewardModelError(f"reward '{reward}' option label: the model has {count} labels "
                               f"({', '.join(names) or 'unnamed'}); choose one by index or name")
    if isinstance(label, str):
        if label not in names:
            raise RewardModelError(f"reward '{reward}' option label: no label {label!r}; the model's labels: "
                                   f"{', '.join(names)}")
        return names[label]
    if not 0 <= label < count:
        raise RewardModelError(f"reward '{reward}' option label: index {label} is out of range; the model has "
                               f"{count} label{'s' if count > 1 else ''}")
    return label
