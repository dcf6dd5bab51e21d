"""The fixed PPO engine: one update = rollout (sample, score, evaluate, GAE) then K epochs of minibatch steps.

The engine returns its statistics; logging, evaluation and checkpoints belong to the outer loop.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from ..config import GenerationConfig, OptimConfig, PPOConfig
from ..runtime.loop import NonFiniteError
from ..runtime.optim import clip_gradients, make_scheduler, optimizer_for
from .functional import (
    AdaptiveKLController,
    FixedKLController,
    clipped_policy_loss,
    clipped_value_loss,
    explained_variance,
    gae,
    kl_penalty,
    masked_mean,
    masked_sum,
    masked_whiten,
    per_token_rewards,
    ppo_total_loss,
)
from .rollout import Responses, response_outputs, sample_responses


@dataclass
class PromptBatch:
    """Left-padded prompts plus whatever the scorer needs to know about each one."""

    input_ids: torch.Tensor  # [B, P]
    attention_mask: torch.Tensor  # [B, P]
    records: Sequence  # one per row, handed back to the scorer


@dataclass
class Rollout:
    """The buffer one update trains on (every tensor [B, R] unless noted)."""

    sequences: torch.Tensor  # [B, P+R]
    attention_mask: torch.Tensor  # [B, P+R]
    prompt_length: int
    response_mask: torch.Tensor  # float 0/1
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor

    def __len__(self) -> int:
        return self.sequences.size(0)


# scorer(responses, prompt batch, reference last hidden states or None) -> (scores [B], statistics).
# A scorer whose attribute ``reads_reference_hidden`` is true gets the frozen reference's final hidden state
# at each sequence's last real token [B, H], so a learned reward head on that backbone needs no forward.
Scorer = Callable[[Responses, PromptBatch, Optional[torch.Tensor]], tuple[torch.Tensor, dict[str, float]]]


def make_kl_controller(ppo: PPOConfig):
    if ppo.kl.target is None:
        return FixedKLController(ppo.kl.coef)
    return AdaptiveKLController(ppo.kl.coef, ppo.kl.target, ppo.kl.horizon)


class PPOEngine:
    def __init__(
        self,
        model: nn.Module,
        reference: nn.Module,
        ppo: PPOConfig,
        generation: GenerationConfig,
        optim: OptimConfig,
        total_updates: int,
        eos_token_id: int,
        pad_token_id: int,
        generator: torch.Generator,
        max_nonfinite_steps: int = 3,
    ):
        self.model = model
        self.reference = reference
        self.ppo = ppo
        self.generation = generation
        self.optim_config = optim
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        self.generator = generator
        self.max_nonfinite_steps = max_nonfinite_steps
        self.kl_controller = make_kl_controller(ppo)
        self.optimizer = optimizer_for(model, optim)
        steps_per_update = ppo.epochs * (ppo.rollout_batch_size // ppo.minibatch_size)
        self.scheduler = make_scheduler(self.optimizer, steps_per_update * total_updates, optim.warmup_steps,
                                        optim.schedule)
        self.nonfinite_in_a_row = 0
        self.device = next(model.parameters()).device

    # ---- one update ---------------------------------------------------------------------------------
    def step(self, batch: PromptBatch, scorer: Scorer) -> dict[str, float]:
        started = time.perf_counter()
        rollout, stats = self.collect_rollout(batch, scorer)
        stats["time/rollout_s"] = time.perf_counter() - started
        started = time.perf_counter()
        stats.update(self.optimise(rollout))
        stats["time/train_s"] = time.perf_counter() - started
        return stats

    @torch.no_grad()
    def collect_rollout(self, batch: PromptBatch, scorer: Scorer) -> tuple[Rollout, dict[str, float]]:
        self.model.eval()
        # 1. sample responses from the current policy (KV cache; a row stops at eos)
        started = time.perf_counter()
        responses = self.generate(batch.input_ids, batch.attention_mask)
        generate_s = time.perf_counter() - started
        sequences = torch.cat([batch.input_ids, responses.tokens], dim=1)
        attention_mask = torch.cat([batch.attention_mask.bool(), responses.mask], dim=1)
        prompt_length = batch.input_ids.size(1)
        mask = responses.mask.float()

        # 2. log pi_old and V(s_t) from the policy, log pi_ref from the frozen reference: one code path
        started = time.perf_counter()
        old_logprobs, old_values, ref_logprobs, ref_hidden, evaluate_times = self._evaluate(
            sequences, attention_mask, prompt_length, getattr(scorer, "reads_reference_hidden", False))
        evaluate_s = time.perf_counter() - started

        # 3. score the responses: the composer's weighted total per sample
        started = time.perf_counter()
        scores, stats = scorer(responses, batch, ref_hidden)
        scores = scores.to(self.device, torch.float32)
        score_s = time.perf_counter() - started
        if self.ppo.missing_eos_penalty is not None:
            scores = scores - self.ppo.missing_eos_penalty * (~responses.stopped_by_eos).float()
        if self.ppo.reward_clip is not None:
            scores = scores.clamp(-self.ppo.reward_clip, self.ppo.reward_clip)

        # 4. per-token rewards: -beta * KL on every token, the sequence score on the last real token
        kl = kl_penalty(old_logprobs, ref_logprobs, self.ppo.kl.estimator)
        kl_coef = self.kl_controller.value
        in_reward_coef = kl_coef if self.ppo.kl.placement == "reward" else 0.0
        rewards = per_token_rewards(scores, kl, in_reward_coef, mask)
        if self.ppo.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False)

        # 5. GAE -> advantages (whitened over the whole batch) and returns
        advantages, returns = gae(rewards, old_values, mask, self.ppo.gamma, self.ppo.lam)
        if self.ppo.whiten_advantages:
            advantages = masked_whiten(advantages, mask)

        sequence_kl = masked_sum(old_logprobs - ref_logprobs, mask, dim=1)  # k1 summed over each response
        self.kl_controller.update(float(sequence_kl.mean()), len(scores))
        lengths = mask.sum(1)
        stats.update({
            "kl": float(sequence_kl.mean()),
            "kl_coef": kl_coef,
            "score/mean": float(scores.mean()),
            "response/length_mean": float(lengths.mean()),
            "response/eos_rate": float(responses.stopped_by_eos.float().mean()),
            "value/mean": float(masked_mean(old_values, mask)),
            "value/explained_variance": float(explained_variance(old_values, returns, mask)),
            "time/generate_s": generate_s,
            "time/score_s": score_s,
            "time/evaluate_s": evaluate_s,
            "time/evaluate_policy_s": evaluate_times[0],
            "time/evaluate_reference_s": evaluate_times[1],
            "response_tokens": float(lengths.sum()),
        })
        rollout = Rollout(sequences=sequences, attention_mask=attention_mask, prompt_length=prompt_length,
                          response_mask=mask, logprobs=old_logprobs, ref_logprobs=ref_logprobs,
                          values=old_values, advantages=advantages, returns=returns)
        return rollout, stats

    @torch.no_grad()
    def generate(self, input_ids, attention_mask, greedy: bool = False) -> Responses:
        gen = self.generation
        chunk = gen.batch_size or input_ids.size(0)
        parts = [
            sample_responses(self.model.policy, input_ids[i:i + chunk], attention_mask[i:i + chunk],
                             gen.max_new_tokens, self.eos_token_id, self.pad_token_id, self.generator,
                             gen.temperature, gen.top_k, gen.top_p, greedy=greedy)
            for i in range(0, input_ids.size(0), chunk)
        ]
        return _concat_responses(parts, self.pad_token_id)

    def _evaluate(self, sequences, attention_mask, prompt_length, with_reference_hidden: bool):
        """log pi_old, V, log pi_ref (and the reference's last hidden states) in micro-batches of the
        training size, so rollout and training run the same shapes and get the same numbers."""
        size = self.ppo.micro_batch_size or self.ppo.minibatch_size
        olds, refs = [], []
        policy_s = reference_s = 0.0
        for i in range(0, sequences.size(0), size):
            rows = slice(i, i + size)
            started = time.perf_counter()
            olds.append(response_outputs(self.model, sequences[rows], attention_mask[rows], prompt_length,
                                         self.generation.temperature))
            policy_s += time.perf_counter() - started
            started = time.perf_counter()
            refs.append(response_outputs(self.reference, sequences[rows], attention_mask[rows], prompt_length,
                                         self.generation.temperature, with_values=False,
                                         with_last_hidden=with_reference_hidden))
            reference_s += time.perf_counter() - started
        ref_hidden = torch.cat([r.last_hidden for r in refs]) if with_reference_hidden else None
        return (torch.cat([o.logprobs for o in olds]), torch.cat([o.values for o in olds]),
                torch.cat([r.logprobs for r in refs]), ref_hidden, (policy_s, reference_s))

    # ---- K epochs of minibatch steps -----------------------------------------------------------------
    def optimise(self, rollout: Rollout) -> dict[str, float]:
        self.model.train()
        ppo = self.ppo
        micro = ppo.micro_batch_size or ppo.minibatch_size
        totals: dict[str, float] = {}
        steps = skipped = 0
        for _epoch in range(ppo.epochs):
            order = torch.randperm(len(rollout), generator=self.generator).to(self.device)
            for start in range(0, len(rollout), ppo.minibatch_size):
                minibatch = order[start:start + ppo.minibatch_size]
                minibatch_tokens = rollout.response_mask[minibatch].sum().clamp(min=1.0)
                self.optimizer.zero_grad(set_to_none=True)
                step_stats: dict[str, float] = {}
                for micro_start in range(0, len(minibatch), micro):
                    rows = minibatch[micro_start:micro_start + micro]
                    loss, micro_stats = self._loss(rollout, rows)
                    share = rollout.response_mask[rows].sum() / minibatch_tokens
                    (loss * share).backward()
                    for key, value in micro_stats.items():
                        step_stats[key] = step_stats.get(key, 0.0) + value * float(share)
                grad_norm = self._clip_gradients()
                if not (math.isfinite(grad_norm) and math.isfinite(step_stats["loss/total"])):
                    skipped += 1
                    self.nonfinite_in_a_row += 1
                    self.optimizer.zero_grad(set_to_none=True)
                    if self.nonfinite_in_a_row >= self.max_nonfinite_steps:
                        raise NonFiniteError(
                            f"{self.nonfinite_in_a_row} optimizer steps in a row had a non-finite loss or "
                            f"gradient (loss {step_stats['loss/total']}, grad norm {grad_norm}); stopping. "
                            f"Lower optim.lr, set optim.max_grad_norm, or check the rewards' scale")
                    continue
                self.nonfinite_in_a_row = 0
                self.optimizer.step()
                self.scheduler.step()
                steps += 1
                step_stats["grad_norm"] = grad_norm
                for key, value in step_stats.items():
                    totals[key] = totals.get(key, 0.0) + value
        stats = {key: value / max(steps, 1) for key, value in totals.items()}
        stats["optim/steps"] = steps
        stats["optim/nonfinite_skipped"] = skipped
        stats["lr"] = self.scheduler.get_last_lr()[0]
        return stats

    def _loss(self, rollout: Rollout, rows: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        ppo = self.ppo
        mask = rollout.response_mask[rows]
        new = response_outputs(self.model, rollout.sequences[rows], rollout.attention_mask[rows],
                               rollout.prompt_length, self.generation.temperature, with_entropy=True)
        policy_loss, clipfrac, approx_kl = clipped_policy_loss(
            new.logprobs, rollout.logprobs[rows], rollout.advantages[rows], mask, ppo.clip_range)
        value_loss, vf_clipfrac = clipped_value_loss(
            new.values, rollout.values[rows], rollout.returns[rows], mask, ppo.clip_range_value)
        entropy = masked_mean(new.entropy, mask)
        loss = ppo_total_loss(policy_loss, value_loss, entropy, ppo.vf_coef, ppo.entropy_coef)
        if ppo.kl.placement == "loss":
            kl = masked_mean(kl_penalty(new.logprobs, rollout.ref_logprobs[rows], ppo.kl.estimator), mask)
            loss = loss + self.kl_controller.value * kl
        stats = {
            "loss/total": loss.item(),
            "loss/policy": policy_loss.item(),
            "loss/value": value_loss.item(),
            "entropy": entropy.item(),
            "clipfrac": clipfrac.item(),
            "value/clipfrac": vf_clipfrac.item(),
            "approx_kl": approx_kl.item(),
        }
        return loss, stats

    def _clip_gradients(self) -> float:
        return clip_gradients(self.model.parameters(), self.optim_config.max_grad_norm)

    # ---- state for checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "kl_controller": self.kl_controller.state_dict(),
            "generator": self.generator.get_state(),
            "nonfinite_in_a_row": self.nonfinite_in_a_row,
        }

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.kl_controller.load_state_dict(state["kl_controller"])
        self.generator.set_state(state["generator"])
        self.nonfinite_in_a_row = int(state["nonfinite_in_a_row"])


def _concat_responses(parts: list[Responses], pad_token_id: int) -> Responses:
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
