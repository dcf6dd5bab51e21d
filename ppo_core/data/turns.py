"""An environment's turns as token ids: its first prompts (the one prompt encoding, :func:`encode_records`) and
the observations appended between two of the model's turns (docs/design.md, "Environments")."""

from __future__ import annotations

from typing import Sequence, Union

from ..config import DataConfig
from ..plugin.contract import Message, Record
from .prompts import EncodedPrompt, encode_records, uses_chat_template

#: a turn as the environment contract normalises it: text, or chat messages
TurnValue = Union[str, Sequence[Message]]

# A conversation the chat template renders before an observation; only what the observation adds is kept.
_BEFORE = ({"role": "user", "content": "x"}, {"role": "assistant", "content": "y"})


def as_messages(turn: TurnValue, role: str = "user") -> list[Message]:
    """Text is one message of ``role``; messages (``Message`` or ``{"role", "content"}``) stay as they are."""
    if isinstance(turn, str):
        return [Message(role=role, content=turn)]
    return [m if isinstance(m, Message) else Message.model_validate(m) for m in turn]


def encode_first_prompts(prompts: Sequence[TurnValue], records: Sequence[Record], tokenizer,
                         config: DataConfig) -> list[EncodedPrompt]:
    """Each episode's first prompt, encoded exactly as a dataset's prompt is (:func:`encode_records`): text is a
    user message. The record keeps its solution and fields (the rewards read them)."""
    return encode_records([record.model_copy(update={"messages": as_messages(prompt)})
                           for prompt, record in zip(prompts, records)], tokenizer, config)


def render_observation(observation: TurnValue, tokenizer, chat_template: bool) -> str:
    """The text appended after the model's turn: through the chat template when the tokenizer has one (text as
    a user turn, messages with their own roles, then the template's assistant header), else the plain text."""
    messages = as_messages(observation)
    if uses_chat_template(tokenizer, chat_template):
        before = tokenizer.apply_chat_template(list(_BEFORE), tokenize=False)
        after = tokenizer.apply_chat_template([*_BEFORE, *(m.model_dump() for m in messages)], tokenize=False,
                                              add_generation_prompt=True)
        if after.startswith(before):
            return after[len(before):]
        return tokenizer.apply_chat_template([m.model_dump() for m in messages], tokenize=False,
                                             add_generation_prompt=True)
    return "\n".join(message.content for message in messages)


def observation_ids(observation: TurnValue, tokenizer, chat_template: bool) -> list[int]:
    """The observation's token ids (no special tokens added: the template writes its own)."""
    return list(tokenizer(render_observation(observation, tokenizer, chat_template),
                          add_special_tokens=False)["input_ids"])
