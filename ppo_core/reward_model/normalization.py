"""Normalising a reward model on the starting policy's responses: gain·raw + bias has mean 0 and std 1."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import torch

from ..config import GenerationConfig
from ..data.prompts import PromptText, as_prompt_text, encode_texts, prompt_token_ids
from ..errors import UserError
from ..plugin.contract import Sample
from .model import RewardModel, tokenizers_compatible
from .training import resolve_reference


@dataclass
class Normalization:
    """gain·raw + bias has mean 0 and std 1 (population) on the ``count`` scored responses."""

    gain: float
    bias: float
    raw_mean: float
    raw_std: float
    count: int
    source: str
    samples: list[Sample] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {"gain": self.gain, "bias": self.bias, "raw_mean": self.raw_mean, "raw_std": self.raw_std,
                "count": self.count, "source": self.source}


def fit_normalization(raw: torch.Tensor) -> tuple[float, float, float, float]:
    """(gain, bias, mean, std) with gain = 1/std and bias = −mean/std (std over all values, in float64)."""
    values = raw.detach().double().flatten()
    if values.numel() < 2:
        raise UserError(f"normalisation needs at least 2 scored responses, got {values.numel()}")
    mean = float(values.mean())
    std = float(values.std(unbiased=False))
    if not math.isfinite(std) or std < 1e-12:
        raise UserError(f"normalisation: the {values.numel()} responses all score {mean:.6g} (std {std:.3g}); "
                        f"cannot scale them to std 1 (score more or more varied responses)")
    return 1.0 / std, -mean / std, mean, std


def _apply_normalization(model: RewardModel, raw: torch.Tensor, source: str, samples: list[Sample]) -> Normalization:
    gain, bias, mean, std = fit_normalization(raw)
    model.gain, model.bias = gain, bias
    result = Normalization(gain, bias, mean, std, int(raw.numel()), source, samples)
    model.normalization = result.as_dict()
    return result


def normalize_on_responses(model: RewardModel, prompts: Sequence[Union[str, PromptText]], responses: Sequence[str],
                           append_eos: bool = True, batch_size: int = 32) -> Normalization:
    """Fit gain and bias on given (prompt, response) texts, and store them on ``model``. The prompts are
    tokenized as the engine tokenizes them (a ``str`` is raw text, not chat-templated)."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    tokenizer = model.tokenizer
    samples = []
    for prompt, response in zip(map(as_prompt_text, prompts), responses):
        samples.append(Sample(prompt=prompt.text, response=response,
                              response_ids=tuple(tokenizer(response, add_special_tokens=False)["input_ids"]),
                              solution=None, stop_reason="eos" if append_eos else "length",
                              prompt_ids=tuple(prompt_token_ids(prompt.text, tokenizer, prompt.templated))))
    raw = model.score_samples(samples, batch_size, normalize=False)
    return _apply_normalization(model, raw, "given responses", samples)


def choose_prompts(prompts: Sequence[Union[str, PromptText]], count: int, seed: int) -> list:
    """``count`` prompts drawn without replacement (in passes when there are fewer), seeded."""
    if not prompts:
        raise UserError("normalisation: no prompts to sample responses for")
    rng = random.Random(seed)
    chosen: list = []
    while len(chosen) < count:
        chosen += rng.sample(list(prompts), min(len(prompts), count - len(chosen)))
    return chosen


@torch.no_grad()
def sample_policy_responses(policy_path: str, prompts: Sequence[Union[str, PromptText]], *, max_new_tokens: int = 32,
                            temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                            batch_size: int = 32, tokenizer_path: Optional[str] = None,
                            trust_remote_code: bool = False, device: Union[str, torch.device] = "cpu"
                            ) -> tuple[list[Sample], Any]:
    """Sample one response per prompt from a policy checkpoint through the engine's sampler
    (:func:`~ppo_core.ppo.rollout.sample_prompts`); returns the samples (prompt ids, response ids without eos,
    stop reason, as a rollout makes them) and the policy's tokenizer."""
    from ..modeling.loading import disable_dropout, load_causal_lm, load_tokenizer
    from ..ppo.rollout import sample_prompts

    tokenizer = load_tokenizer(tokenizer_path or policy_path, trust_remote_code)
    policy = load_causal_lm(policy_path, trust_remote_code, tokenizer).to(device)
    policy.eval()
    disable_dropout(policy)
    generator = torch.Generator(device=torch.device(device)).manual_seed(seed)
    generation = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                  batch_size=batch_size)
    encoded = encode_texts([as_prompt_text(prompt) for prompt in prompts], tokenizer)
    return sample_prompts(policy, encoded, tokenizer, generation, generator, device=device), tokenizer


def normalize_on_policy(model: RewardModel, policy_path: str, prompts: Sequence[Union[str, PromptText]], *,
                        num_prompts: int = 64, max_new_tokens: int = 32, temperature: float = 1.0, top_k: int = 0,
                        top_p: float = 1.0, seed: int = 0, batch_size: int = 32,
                        tokenizer_path: Optional[str] = None, trust_remote_code: bool = False) -> Normalization:
    """Sample responses of the starting policy to ``num_prompts`` of ``prompts`` (seeded), score them raw, and
    store gain and bias so that their normalised scores have mean 0 and std 1. A ``str`` prompt is raw text; a
    :class:`~ppo_core.data.prompts.PromptText` says whether its text is chat-templated."""
    chosen = choose_prompts(prompts, num_prompts, seed)
    samples, policy_tokenizer = sample_policy_responses(
        policy_path, chosen, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
        seed=seed, batch_size=batch_size, tokenizer_path=tokenizer_path, trust_remote_code=trust_remote_code,
        device=model.device)
    same_vocab = tokenizers_compatible(policy_tokenizer, model.tokenizer)
    raw = model.score_samples(samples, batch_size, normalize=False, same_vocab=same_vocab)
    return _apply_normalization(model, raw, f"policy {resolve_reference(policy_path)}", samples)
