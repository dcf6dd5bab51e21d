"""Prompts: records from a dataset plugin rendered (chat template), tokenized and left-padded.

:func:`encode_records` is the one way records become prompt ids (PPO rollouts, SFT, eval), and
:func:`prompt_token_ids` the one tokenization of rendered text, which reward-model training and normalisation
use too; :func:`make_samples` turns sampled responses into what the rewards see."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

import torch

from ..config import DataConfig
from ..errors import DataError
from ..plugin.contract import Message, Record, Sample


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
    """A record as the policy reads it. ``record`` holds the conversation as encoded (after truncation);
    ``skipped_before``: the too-long records a stream left out just before this one (``long_prompts: skip``)."""

    record: Record
    text: str
    ids: list[int]
    templated: bool = False
    truncated: bool = False
    skipped_before: int = 0


def long_prompt_stats(prompts: Sequence[EncodedPrompt]) -> dict[str, float]:
    """The metrics of a batch of prompts: how many were truncated, and how many skipped to draw it (a prompt
    repeated for a group of samples counts once)."""
    distinct = list({id(p): p for p in prompts}.values())
    return {"data/truncated_prompts": float(sum(p.truncated for p in distinct)),
            "data/skipped_prompts": float(sum(p.skipped_before for p in distinct))}


def _warn_on_stderr(line: str) -> None:
    print(line, file=sys.stderr)


@dataclass
class LongPrompts:
    """Counts the prompts longer than ``data.max_prompt_tokens`` that were truncated or skipped; the first one is
    announced through ``warn`` (one line), the counts go to the metrics (``data/truncated_prompts``)."""

    truncated: int = 0
    skipped: int = 0
    warn: Callable[[str], None] = field(default=_warn_on_stderr, repr=False)

    def count(self, record: Record, tokens: int, config: DataConfig) -> None:
        skip = config.long_prompts == "skip"
        if not (self.truncated or self.skipped):
            done = "skipped" if skip else "truncated (the system turn kept, the conversation after it cut from its start)"
            self.warn(f"warning: data.max_prompt_tokens: prompts longer than {config.max_prompt_tokens} tokens are "
                      f"{done}; the first has {tokens} tokens: {_shown(record.prompt_text)!r} "
                      f"(counted in data/{'skipped' if skip else 'truncated'}_prompts)")
        if skip:
            self.skipped += 1
        else:
            self.truncated += 1


#: The count of the prompts encoded outside a :class:`~ppo_core.data.stream.PromptStream` (the eval split of
#: ``eval`` and of SFT's ``eval_every``): they are announced once per process, not at every evaluation.
UNSTREAMED = LongPrompts()


def _shown(text: str) -> str:
    return text if len(text) <= 60 else text[:57] + "..."


def encode_record(record: Record, tokenizer, config: DataConfig, long_prompts: Optional[LongPrompts] = None
                  ) -> Optional[EncodedPrompt]:
    """A record -> the prompt ids the policy reads: rendered (chat template), tokenized, held to
    ``max_prompt_tokens`` as ``long_prompts`` says (``None``: the record is skipped)."""
    prompt = render_prompt(record, tokenizer, config.chat_template)
    ids = prompt_token_ids(prompt.text, tokenizer, prompt.templated)
    if len(ids) <= config.max_prompt_tokens:
        return EncodedPrompt(record, prompt.text, ids, prompt.templated)
    if config.long_prompts == "error":
        raise DataError(f"data.max_prompt_tokens: prompt {_shown(prompt.text)!r} has {len(ids)} tokens, more than "
                        f"{config.max_prompt_tokens} (data.long_prompts: truncate cuts it, skip leaves it out)")
    (long_prompts or UNSTREAMED).count(record, len(ids), config)
    return None if config.long_prompts == "skip" else truncate_prompt(record, tokenizer, config)


def truncate_prompt(record: Record, tokenizer, config: DataConfig) -> EncodedPrompt:
    """The record cut to ``max_prompt_tokens``: the leading system turns are kept whole and the conversation
    after them is cut from its start, whole tokens at a time, keeping every turn's template markup; a turn left
    with no room is dropped and the cut goes on into the next one."""
    limit = config.max_prompt_tokens
    messages = list(record.messages)
    first = next((i for i, message in enumerate(messages) if message.role != "system"), len(messages))
    while first < len(messages):
        cuts = _cut_points(messages[first].content, tokenizer)
        emptied = len(_cut_turn(record, messages, first, cuts[-1], tokenizer, config).ids)
        if emptied <= limit:
            # cuts[k] drops the turn's first k tokens; were token counts additive, keeping `limit - emptied` fits
            guess = max(len(cuts) - 1 - (limit - emptied), 0)
            best = _fewest(lambda k: len(_cut_turn(record, messages, first, cuts[k], tokenizer, config).ids) <= limit,
                           len(cuts), guess)
            return _cut_turn(record, messages, first, cuts[best], tokenizer, config)
        if first == len(messages) - 1:
            break
        del messages[first]  # even emptied, this turn leaves no room: drop it and cut into the next one
    raise DataError(f"data.max_prompt_tokens: the system turn(s) and chat template of prompt "
                    f"{_shown(record.prompt_text)!r} alone take more than {limit} tokens; raise "
                    f"data.max_prompt_tokens or set data.long_prompts: skip")


def _fewest(fits: Callable[[int], bool], count: int, guess: int) -> int:
    """The smallest k in [0, count) with ``fits(k)``, given that ``fits(count - 1)`` and that fitting is monotone:
    ``guess`` and ``guess - 1`` are tried first (two calls when the guess is right), then bisection."""
    low, high = 0, count - 1
    for probe in (guess, guess - 1):
        if low <= probe < high:
            if fits(probe):
                high = probe
            else:
                low = probe + 1
    while low < high:
        middle = (low + high) // 2
        if fits(middle):
            high = middle
        else:
            low = middle + 1
    return high


def _cut_turn(record: Record, messages: list[Message], index: int, cut: int, tokenizer, config: DataConfig
              ) -> EncodedPrompt:
    """``record`` with ``messages``, turn ``index`` losing its first ``cut`` characters, rendered and encoded."""
    turn = messages[index]
    kept = [*messages[:index], Message(role=turn.role, content=turn.content[cut:]), *messages[index + 1:]]
    cut_record = record.model_copy(update={"messages": kept})
    prompt = render_prompt(cut_record, tokenizer, config.chat_template)
    return EncodedPrompt(cut_record, prompt.text, prompt_token_ids(prompt.text, tokenizer, prompt.templated),
                         prompt.templated, truncated=True)


def _cut_points(content: str, tokenizer) -> list[int]:
    """Where a turn's text may be cut: the start of each of its tokens (a fast tokenizer's offsets), else every
    character; always ending with ``len(content)`` (the whole text cut)."""
    try:
        offsets = tokenizer(content, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        starts = sorted({start for start, end in offsets if end > start and start > 0})
    except (NotImplementedError, ValueError, TypeError, KeyError):
        starts = list(range(1, len(content)))
    return [0, *starts, len(content)]


def encode_records(records: Sequence[Record], tokenizer, config: DataConfig,
                   long_prompts: Optional[LongPrompts] = None) -> list[EncodedPrompt]:
    """Records -> encoded prompts (:func:`encode_record`), the skipped ones left out. The one way a dataset's
    prompts become token ids; ``long_prompts`` counts (and announces once) the prompts that were too long."""
    long_prompts = long_prompts or UNSTREAMED
    encoded = (encode_record(record, tokenizer, config, long_prompts) for record in records)
    return [prompt for prompt in encoded if prompt is not None]


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
               stop_reason="eos" if stopped else "length", fields=p.record.fields, prompt_ids=tuple(p.ids),
               messages=tuple(p.record.messages))
        for p, text, ids, stopped in zip(prompts, texts, kept, eos)
    ]
