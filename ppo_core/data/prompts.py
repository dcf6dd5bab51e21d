"""Prompts: records from a dataset plugin rendered (chat template), tokenized and left-padded.

:func:`encode_records` is the one way records become prompt ids (PPO rollouts, SFT, eval), and
:func:`prompt_token_ids` the one tokenization of rendered text, which reward-model training and normalisation
use too; :func:`make_samples` turns sampled responses into what the rewards see."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import torch

from ..config import DataConfig
from ..errors import DataError
from ..plugin.contract import Record, Sample


def uses_chat_template(tokenizer, chat_template: bool) -> bool:
    """Whether prompts are rendered with the tokenizer's chat template (asked for, and the tokenizer has one)."""
    return bool(chat_template and getattr(tokenizer, "chat_template", None))


@dataclass(frozen=True)
class PromptText:
    """A prompt as the model reads it. ``templated``: rendered by the tokenizer's chat template, which writes
    its own special tokens."""

    text: str
    templated: bool = False


def as_prompt_text(prompt: Union[str, PromptText]) -> PromptText:
    """A plain string is raw text (not chat-templated)."""
    return prompt if isinstance(prompt, PromptText) else PromptText(prompt)


def render_prompt(record: Record, tokenizer, chat_template: bool) -> PromptText:
    """The record's conversation as the text the model continues."""
    if uses_chat_template(tokenizer, chat_template):
        messages = [message.model_dump() for message in record.messages]
        return PromptText(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), True)
    return PromptText(record.prompt_text)


def prompt_token_ids(text: str, tokenizer, templated: bool) -> list[int]:
    """The token ids of a rendered prompt, the one tokenization every prompt goes through (PPO rollouts, eval,
    SFT, reward-model training and normalisation)."""
    # a chat template writes its own special tokens; raw text gets the tokenizer's (e.g. a leading bos)
    return list(tokenizer(text, add_special_tokens=not templated)["input_ids"])


def encode_prompt(text: str, tokenizer, config: DataConfig, templated: bool) -> list[int]:
    ids = prompt_token_ids(text, tokenizer, templated)
    if len(ids) > config.max_prompt_tokens:
        if config.long_prompts == "reject":
            shown = text if len(text) <= 60 else text[:57] + "..."
            raise DataError(f"data.max_prompt_tokens: prompt {shown!r} has {len(ids)} tokens, more than "
                            f"{config.max_prompt_tokens} (set data.long_prompts: truncate to keep its end)")
        ids = ids[-config.max_prompt_tokens:]
    return ids


def left_pad(rows: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            input_ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, width - len(row):] = 1
    return input_ids, attention_mask


@dataclass
class EncodedPrompt:
    record: Record
    text: str
    ids: list[int]
    templated: bool = False


def encode_records(records: Sequence[Record], tokenizer, config: DataConfig) -> list[EncodedPrompt]:
    """Records -> the prompt ids the policy reads: rendered (chat template), tokenized, held to
    ``max_prompt_tokens`` as ``long_prompts`` says. The one way a dataset's prompts become token ids."""
    out = []
    for record in records:
        prompt = render_prompt(record, tokenizer, config.chat_template)
        ids = encode_prompt(prompt.text, tokenizer, config, prompt.templated)
        out.append(EncodedPrompt(record, prompt.text, ids, prompt.templated))
    return out


def encode_texts(prompts: Sequence[PromptText], tokenizer) -> list[EncodedPrompt]:
    """Prompts already rendered (a reward model's data) -> encoded prompts, tokenized as :func:`encode_records`
    tokenizes (no length limit: such prompts come without a data config)."""
    return [EncodedPrompt(Record.from_dict({"prompt": p.text}), p.text,
                          prompt_token_ids(p.text, tokenizer, p.templated), p.templated) for p in prompts]


def make_samples(prompts: Sequence[EncodedPrompt], response_tokens: torch.Tensor, response_mask: torch.Tensor,
                 stopped_by_eos: torch.Tensor, tokenizer) -> list[Sample]:
    """What the rewards see: the response text without special tokens, cut at (and without) its eos."""
    token_rows = response_tokens.tolist()
    lengths = response_mask.sum(1).tolist()
    eos = stopped_by_eos.tolist()
    kept = [row[: int(n) - (1 if stopped else 0)] for row, n, stopped in zip(token_rows, lengths, eos)]
    texts = tokenizer.batch_decode(kept, skip_special_tokens=True)
    return [
        Sample(prompt=p.text, response=text, response_ids=tuple(ids), solution=p.record.solution,
               stop_reason="eos" if stopped else "length", fields=p.record.fields, prompt_ids=tuple(p.ids))
        for p, text, ids, stopped in zip(prompts, texts, kept, eos)
    ]
