"""Prompts for the engine: records from a dataset plugin, shuffled, rendered, tokenized and left-padded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..config import DataConfig
from ..errors import DataError
from ..plugin.contract import Record, Sample


def render_prompt(record: Record, tokenizer, chat_template: bool) -> str:
    """The record's conversation as the text the model continues."""
    if chat_template and getattr(tokenizer, "chat_template", None):
        messages = [message.model_dump() for message in record.messages]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return record.prompt_text


def encode_prompt(text: str, tokenizer, config: DataConfig, templated: bool) -> list[int]:
    # a chat template writes its own special tokens; raw text gets the tokenizer's (e.g. a leading bos)
    ids = tokenizer(text, add_special_tokens=not templated)["input_ids"]
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


def encode_records(records: Sequence[Record], tokenizer, config: DataConfig) -> list[EncodedPrompt]:
    templated = bool(config.chat_template and getattr(tokenizer, "chat_template", None))
    out = []
    for record in records:
        text = render_prompt(record, tokenizer, config.chat_template)
        out.append(EncodedPrompt(record, text, encode_prompt(text, tokenizer, config, templated)))
    return out


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
