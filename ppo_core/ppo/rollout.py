"""Sampling responses with a KV cache, and the one forward that turns tokens into log-probs and values.

The one sampler: encoded prompts (:func:`ppo_core.data.prompts.encode_records`) are left-padded together and
answered in chunks of ``generation.batch_size`` by :func:`generate_responses`; :func:`sample_prompts` turns the
result into samples (:class:`~ppo_core.plugin.contract.Sample`). PPO rollouts, ``eval`` and reward-model
normalisation all go through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch
from torch import nn

from ..config import GenerationConfig
from ..data.prompts import EncodedPrompt, left_pad, make_samples
from ..modeling.compat import forward_argument, logits_to_keep
from ..modeling.kv_cache import preallocated_cache, reserve
from ..modeling.loading import end_of_response_ids
from ..plugin.contract import Sample
from .functional import entropy_from_logits, last_token_index, logprobs_from_logits


@dataclass
class Responses:
    """What sampling produced for a left-padded prompt batch."""

    tokens: torch.Tensor  # [B, R] response token ids, pad after the end
    mask: torch.Tensor  # [B, R] bool, True for real response tokens (up to and including eos)
    stopped_by_eos: torch.Tensor  # [B] bool; False: cut off by max_new_tokens
    #: [B, R] bool, the tokens the model generated (the actions); None: all of ``mask``. Multi-turn episodes
    #: (ppo_core.ppo.episodes) also hold an environment's observation tokens, which are context, not actions.
    action_mask: Optional[torch.Tensor] = None
    #: where sampling stopped, one per chunk, to continue it (see :func:`generate_responses`'s ``keep_states``)
    states: Optional[list["SamplerState"]] = None


#: ``stop(columns, running) -> [B] bool``: which of the ``running`` rows end with the newest of the sampled
#: ``columns`` (a list of [B] token tensors); see :class:`StopStrings`.
StopRule = Callable[[list, torch.Tensor], torch.Tensor]


class StopStrings:
    """A :data:`StopRule`: a row ends once its sampled text contains one of ``strings`` (kept in the text)."""

    def __init__(self, tokenizer, strings: Sequence[str]):
        self.tokenizer = tokenizer
        self.strings = tuple(strings)
        self.window = max(len(s) for s in self.strings) + 1  # tokens: each holds at least one character

    def __call__(self, columns: list, running: torch.Tensor) -> torch.Tensor:
        recent = torch.stack(columns[-self.window:], dim=1).tolist()
        hits = torch.zeros_like(running)
        for row in running.nonzero().flatten().tolist():
            text = self.tokenizer.decode(recent[row], skip_special_tokens=True)
            hits[row] = any(stop in text for stop in self.strings)
        return hits


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions count real tokens only, so left padding does not shift them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Mask out tokens outside the top-k and outside the smallest set with probability mass >= top_p."""
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the mass before it already reaches top_p (the most likely token always stays)
        drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def _cache_argument(model: nn.Module) -> str:
    """transformers 5.x names the KV cache `cache`; earlier releases `past_key_values`."""
    return forward_argument(model, "cache") or "past_key_values"


def _returned_cache(out):
    return out["cache"] if "cache" in out else out["past_key_values"]


@dataclass
class SamplerState:
    """Where a batch's sampling stopped, to continue it later without re-encoding (an episode's next turn):
    the KV cache and the attention mask of every column in it (0: padding, or a row that had finished), the
    last sampled column (not in the cache yet) and each row's next-token logits after its last real token."""

    cache: object
    attention_mask: torch.Tensor  # [B, L] long
    pending: torch.Tensor  # [B] the last sampled token of each row
    pending_mask: torch.Tensor  # [B] bool, whether it is real
    logits: torch.Tensor  # [B, V]


@torch.no_grad()
def sample_responses(
    policy: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: Union[int, Sequence[int]],
    pad_token_id: int,
    generator: torch.Generator,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    greedy: bool = False,
    stop: Optional[StopRule] = None,
    state: Optional[SamplerState] = None,
    running: Optional[torch.Tensor] = None,
) -> Responses:
    """Autoregressive sampling with the model's KV cache; a row stops at its first eos (any of ``eos_token_id``)
    or when ``stop`` says.

    ``input_ids`` (left-padded) are the prompts, or, with ``state``, the tokens to append to what ``state``
    holds (an episode's observations; a row may append none). Rows outside ``running`` [B] bool sample nothing.
    The responses carry the state to continue from.
    """
    batch_size = input_ids.size(0)
    device = input_ids.device
    eos_ids = torch.tensor(eos_token_id, device=device).reshape(-1)
    feed_ids, feed_mask = input_ids, attention_mask.long()
    if state is None:
        full_mask = feed_mask
        cache = preallocated_cache(policy, input_ids.size(1) + max_new_tokens)
    else:  # the last column sampled before, then the new tokens, after everything in the cache
        feed_ids = torch.cat([state.pending[:, None], input_ids], dim=1)
        feed_mask = torch.cat([state.pending_mask.long()[:, None], feed_mask], dim=1)
        full_mask = torch.cat([state.attention_mask, feed_mask], dim=1)
        cache = state.cache
        reserve(cache, full_mask.size(1) + max_new_tokens)
    position_ids = position_ids_from_mask(full_mask)[:, -feed_ids.size(1):]
    cache_argument = _cache_argument(policy)
    out = policy(input_ids=feed_ids, attention_mask=full_mask, position_ids=position_ids, use_cache=True,
                 **logits_to_keep(policy, 1), **({cache_argument: cache} if cache is not None else {}))
    cache = _returned_cache(out)
    next_logits = out.logits[:, -1, :]
    if state is not None:  # a row that appended nothing continues from its last real token's logits
        next_logits = torch.where(feed_mask.bool().any(1, keepdim=True), next_logits, state.logits)
    row_logits = next_logits
    attention_mask = full_mask
    next_position = position_ids[:, -1:] + 1
    finished = torch.zeros(batch_size, dtype=torch.bool, device=device) if running is None else ~running.bool()
    tokens, masks = [], []
    for step in range(max_new_tokens):
        if greedy:
            token = next_logits.argmax(-1)
        else:
            probs = filter_logits(next_logits / temperature, top_k, top_p).softmax(-1)
            token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        masks.append(~finished)
        token = token.masked_fill(finished, pad_token_id)
        tokens.append(token)
        finished = finished | torch.isin(token, eos_ids)
        if stop is not None:
            finished = finished | stop(tokens, masks[-1] & ~finished)
        if step == max_new_tokens - 1 or bool(finished.all()):
            break
        # a finished row's padding is masked out, so a later turn never attends to it
        attention_mask = torch.cat([attention_mask, masks[-1].long()[:, None]], dim=1)
        out = policy(input_ids=token[:, None], attention_mask=attention_mask, position_ids=next_position,
                     use_cache=True, **{cache_argument: cache})
        cache = _returned_cache(out)
        next_logits = out.logits[:, -1, :]
        row_logits = torch.where(masks[-1][:, None], next_logits, row_logits)
        next_position = next_position + masks[-1].long()[:, None]
    response = torch.stack(tokens, dim=1)
    mask = torch.stack(masks, dim=1)
    stopped_by_eos = (torch.isin(response, eos_ids) & mask).any(dim=1)
    return Responses(tokens=response, mask=mask, stopped_by_eos=stopped_by_eos,
                     states=[SamplerState(cache, attention_mask, tokens[-1], masks[-1], row_logits)])


def without_padding_columns(input_ids: torch.Tensor, attention_mask: torch.Tensor
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the leading columns that are padding in every row: a chunk of a batch left-padded as a whole is then
    the chunk left-padded on its own, so chunking never changes what is sampled."""
    first = int(attention_mask.bool().any(0).long().argmax())
    return input_ids[:, first:], attention_mask[:, first:]


def concat_responses(parts: Sequence[Responses], pad_token_id: int) -> Responses:
    if len(parts) == 1:
        return parts[0]
    width = max(p.tokens.size(1) for p in parts)

    def pad(t, value):
        return torch.nn.functional.pad(t, (0, width - t.size(1)), value=value)

    return Responses(
        tokens=torch.cat([pad(p.tokens, pad_token_id) for p in parts]),
        mask=torch.cat([pad(p.mask, False) for p in parts]),
        stopped_by_eos=torch.cat([p.stopped_by_eos for p in parts]),
    )


@torch.no_grad()
def generate_responses(policy: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       generation: GenerationConfig, eos_token_id: Union[int, Sequence[int]], pad_token_id: int,
                       generator: Optional[torch.Generator], greedy: bool = False,
                       stop: Optional[StopRule] = None, states: Optional[list[SamplerState]] = None,
                       running: Optional[torch.Tensor] = None, keep_states: bool = False,
                       on_chunk: Optional[Callable[[slice, Responses], None]] = None) -> Responses:
    """:func:`sample_responses` over a left-padded batch in chunks of ``generation.batch_size`` rows (the whole
    batch when unset), one after the other with the same generator. ``on_chunk(rows, responses)`` is called as
    each chunk is done (a PPO rollout starts scoring it there while the next chunk is sampled).

    ``keep_states`` keeps each chunk's :class:`SamplerState` in the result (its KV cache included); passing them
    back as ``states`` appends ``input_ids`` to what they hold and samples on (an episode's next turn), the rows
    outside ``running`` sampling nothing."""
    chunk = generation.batch_size or input_ids.size(0)
    parts, kept = [], []
    for index, start in enumerate(range(0, input_ids.size(0), chunk)):
        rows = slice(start, start + chunk)
        ids, mask = input_ids[rows], attention_mask[rows]
        if ids.size(1):
            ids, mask = without_padding_columns(ids, mask)
        part = sample_responses(policy, ids, mask, generation.max_new_tokens, eos_token_id, pad_token_id,
                                generator, generation.temperature, generation.top_k, generation.top_p,
                                greedy=greedy, stop=stop, state=states[index] if states else None,
                                running=None if running is None else running[rows])
        if keep_states:  # a kept KV cache holds memory, every chunk's until the last is done: only for who asked
            kept += part.states
        part.states = None
        parts.append(part)
        if on_chunk is not None:
            on_chunk(rows, part)
    responses = concat_responses(parts, pad_token_id)
    responses.states = kept if keep_states else None
    return responses


@torch.no_grad()
def sample_prompts(policy: nn.Module, prompts: Sequence[EncodedPrompt], tokenizer, generation: GenerationConfig,
                   generator: Optional[torch.Generator], greedy: bool = False,
                   device: Union[str, torch.device, None] = None) -> list[Sample]:
    """One response per encoded prompt, as a PPO rollout samples and its rewards see it (prompt ids, response
    ids without eos, stop reason)."""
    if not prompts:
        return []
    device = device if device is not None else next(policy.parameters()).device
    input_ids, attention_mask = left_pad([p.ids for p in prompts], tokenizer.pad_token_id)
    responses = generate_responses(policy, input_ids.to(device), attention_mask.to(device), generation,
                                   end_of_response_ids(tokenizer, policy), tokenizer.pad_token_id, generator, greedy)
    return make_samples(prompts, responses.tokens.cpu(), responses.mask.cpu(), responses.stopped_by_eos.cpu(),
                        tokenizer)


@dataclass
class TokenOutputs:
    logprobs: torch.Tensor  # [B, R]
    values: Optional[torch.Tensor] = None  # [B, R]
    entropy: Optional[torch.Tensor] = None  # [B, R]
    last_hidden: Optional[torch.Tensor] = None  # [B, H] final hidden state at each row's last real token


def response_outputs(
    model: nn.Module,
    sequences: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_length: int,
    temperature: float,
    with_values: bool = True,
    with_entropy: bool = False,
    with_last_hidden: bool = False,
    entropy_grad: bool = True,
) -> TokenOutputs:
    """log pi(a_t|s_t) (logits / temperature), V(s_t) and H at every response position.

    The single code path for log-probs: rollout (log pi_old, log pi_ref) and training both call it, so the
    ratio is exactly 1 before the first optimizer step. ``model`` is an ActorCritic (returns logits and values)
    or a plain causal LM (reference model; ``with_values=False``). ``with_last_hidden`` (plain causal LM only)
    also returns the final hidden state at each row's last real token, which a learned reward head can read
    without a forward of its own. ``entropy_grad=False`` gives H as a statistic only, outside the autograd graph: with
    no entropy bonus (``ppo.entropy_coef`` 0) nothing needs its gradient, and a backward through it would keep and
    differentiate a [B, R, V] softmax for a term weighted 0.
    """
    position_ids = position_ids_from_mask(attention_mask)
    # the logits at position t predict token t+1: the response tokens are predicted from P-1 .. end-1, so only
    # the last R+1 positions are asked for (the very last one predicts nothing and is dropped)
    predicting = sequences.size(1) - prompt_length + 1
    last_hidden = None
    if hasattr(model, "value_head"):
        out = model(sequences, attention_mask, position_ids, with_values=with_values, last_positions=predicting)
        logits, values = out.logits, out.values
    else:
        out = model(input_ids=sequences, attention_mask=attention_mask, position_ids=position_ids,
                    use_cache=False, output_hidden_states=with_last_hidden, **logits_to_keep(model, predicting))
        logits, values = out.logits, None
        if with_last_hidden:
            last = last_token_index(attention_mask)
            last_hidden = out.hidden_states[-1][torch.arange(sequences.size(0), device=sequences.device), last]
    logits = logits[:, -predicting:-1, :].float()  # under autocast (train.precision) too: log-probs in fp32
    responses = sequences[:, prompt_length:]
    logprobs = logprobs_from_logits(logits, responses, temperature)
    entropy = None
    if with_entropy:
        entropy = entropy_from_logits(logits if entropy_grad else logits.detach(), temperature)
    if values is not None:
        values = values[:, -predicting:-1].float()
    return TokenOutputs(logprobs=logprobs, values=values, entropy=entropy, last_hidden=last_hidden)
