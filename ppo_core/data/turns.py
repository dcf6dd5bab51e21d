"""An environment's turns as token ids: its first prompts (the one prompt encoding, :func:`encode_records`) and
the observations appended between two of the model's turns (docs/design.md, "Environments"); multi-turn SFT
records laid out the same way."""

from __future__ import annotations

from typing import Optional, Sequence, Union

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


def assistant_turns_start(record: Record) -> Optional[int]:
    """The index of a record's first assistant message after a prompt (a multi-turn transcript), else None."""
    return next((i for i, m in enumerate(record.messages) if m.role == "assistant" and i > 0), None)


def first_prompt(record: Record) -> Record:
    """What a record's prompt is for SFT: a transcript's messages before its first assistant turn (the episode's
    first prompt); any other record itself."""
    start = assistant_turns_start(record)
    return record if start is None else record.model_copy(update={"messages": list(record.messages[:start])})


def transcript_targets(record: Record, tokenizer, chat_template: bool, stop_strings: Sequence[str] = ()
                       ) -> tuple[Record, list[int], list[bool]]:
    """A multi-turn record as SFT learns it, laid out as an environment's episode: the record up to its first
    assistant message (the prompt), then each assistant message + eos (targets) and the messages between two of
    them as an observation (context, :func:`observation_ids`). An assistant message ending with one of
    ``stop_strings`` gets no eos: in an episode that turn ends at the stop string, so eos never follows it.
    Messages after the last assistant one are dropped unless the record has a solution, which then ends the
    transcript as a last assistant turn."""
    start = assistant_turns_start(record)
    ids: list[int] = []
    targets: list[bool] = []
    between: list[Message] = []
    rest = list(record.messages[start:])
    if record.solutions and rest[-1].role != "assistant":
        rest.append(Message(role="assistant", content=record.solutions[0]))
    for message in rest:
        if message.role != "assistant":
            between.append(message)
            continue
        if between:
            context = observation_ids(between, tokenizer, chat_template)
            ids, targets, between = ids + context, targets + [False] * len(context), []
        answer = list(tokenizer(message.content, add_special_tokens=False)["input_ids"])
        if not any(message.content.endswith(stop) for stop in stop_strings):
            answer.append(tokenizer.eos_token_id)
        ids, targets = ids + answer, targets + [True] * len(answer)
    return record.model_copy(update={"messages": list(record.messages[:start])}), ids, targets
