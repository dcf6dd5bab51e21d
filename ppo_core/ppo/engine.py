"""The fixed PPO engine: one update = rollout (sample, evaluate, score, GAE) then K epochs of minibatch steps.

The comments R1-R6 (rollout) and O1-O5 (optimisation) are the numbered blocks of docs/design.md.

The engine returns its statistics; logging, evaluation and checkpoints belong to the outer loop.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional, Protocol, Sequence

import torch
from torch import nn

from ..config import GenerationConfig, OptimConfig, PPOConfig
from ..runtime.loop import NonFiniteGuard
from ..runtime.optim import clip_gradients, make_scheduler, optimizer_for
from .functional import (
    AdaptiveKLController,
    FixedKLController,
    clipped_policy_loss,
    clipped_value_loss,
    explained_variance,
    gae_over_actions,
    kl_penalty,
    masked_mean,
    masked_sum,
    masked_whiten,
    per_token_rewards,
    ppo_total_loss,
)
from .episodes import EpisodeRunner
from .rollout import Responses, generate_responses, response_outputs


@dataclass
class PromptBatch:
    """Left-padded prompts plus whatever the scorer needs to know about each one."""

    input_ids: torch.Tensor  # [B, P]
    attention_mask: torch.Tensor  # [B, P]
    records: Sequence  # one per row, handed back to the scorer
    states: Optional[Sequence] = None  # environment episodes' states after reset; None: one turn, no environment


@dataclass
class Rollout:
    """The buffer one update trains on (every tensor [B, R] unless noted)."""

    sequences: torch.Tensor  # [B, P+R]
    attention_mask: torch.Tensor  # [B, P+R]
    prompt_length: int
    response_mask: torch.Tensor  # float 0/1: every token after the prompt
    action_mask: torch.Tensor  # float 0/1: the model's tokens among them (all of them without an environment)
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor

    def __len__(self) -> int:
        return self.sequences.size(0)


class Scorer(Protocol):
    """Scores a rollout's responses: ``scorer(responses, batch, reference_hidden) -> (scores [B], statistics)``.

    A scorer declares ``reads_reference_hidden``: when true, the engine also asks the frozen reference for its final
    hidden state at each sequence's last real token and passes it as ``reference_hidden`` [B, H] (otherwise None),
    so a learned reward head on that backbone needs no forward of its own (docs/design.md, D10).
    """

    reads_reference_hidden: bool

    def __call__(self, responses: Responses, batch: PromptBatch,
                 reference_hidden: Optional[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]: ...


@contextmanager
def timed(times: dict[str, float], key: str) -> Iterator[None]:
    """Adds the block's wall time in seconds to ``times[key]``."""
    started = time.perf_counter()
    try:
        yield
    finally:
        times[key] = times.get(key, 0.0) + (time.perf_counter() - started)


def accumulate(totals: dict[str, float], stats: dict[str, float], weight: float = 1.0) -> None:
    """totals[key] += weight * stats[key] for every key of ``stats``."""
    for key, value in stats.items():
        totals[key] = totals.get(key, 0.0) + value * weight


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
        episodes: Optional[EpisodeRunner] = None,
    ):
        self.model = model
        self.reference = reference
        self.ppo = ppo
        self.generation = generation
        self.optim_config = optim
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        self.generator = generator
        self.episodes = episodes  # plays environment episodes (batches with states)
        self.nonfinite = NonFiniteGuard(max_nonfinite_steps, advice="stopping. Lower optim.lr, set "
                                        "optim.max_grad_norm, or check the rewards' scale")
        self.kl_controller = make_kl_controller(ppo)
        self.optimizer = optimizer_for(model, optim)
        steps_per_update = ppo.epochs * (ppo.rollout_batch_size // ppo.minibatch_size)
        self.scheduler = make_scheduler(self.optimizer, steps_per_update * total_updates, optim.warmup_steps,
                                        optim.schedule)
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
        """Blocks R1-R6 of docs/design.md: the buffer one update trains on, and its statistics."""
        self.model.eval()
        times: dict[str, float] = {}
        # R1. sample responses from the current policy (KV cache; a row stops at its first eos)
        with timed(times, "time/generate_s"):
            if batch.states is None:
                responses = self.generate(batch.input_ids, batch.attention_mask)
            else:  # environment episodes, turn after turn (ppo_core.ppo.episodes)
                responses = self.episodes.play(self.model.policy, batch.records, batch.states, self.generator)
        sequences = torch.cat([batch.input_ids, responses.tokens], dim=1)
        attention_mask = torch.cat([batch.attention_mask.bool(), responses.mask], dim=1)
        mask = (responses.mask if responses.action_mask is None else responses.action_mask).float()
        # R2. log pi_old, V(s_t) from the policy and log pi_ref from the frozen reference: one code path
        with timed(times, "time/evaluate_s"):
            old_logprobs, old_values, ref_logprobs, ref_hidden = self._evaluate(
                sequences, attention_mask, batch.input_ids.size(1), scorer.reads_reference_hidden, times)
        # R3. sequence scores: the scorer's total per sample, missing-eos penalty and clip (Eq. 11, 12)
        with timed(times, "time/score_s"):
            scores, score_stats = scorer(responses, batch, ref_hidden)
        scores = self._shaped_scores(scores.to(self.device, torch.float32), responses.stopped_by_eos)
        # R4. per-token rewards on the action tokens (Eq. 8; an environment's turn rewards too) -> R5. GAE
        # advantages and returns over the action tokens (Eq. 14, 10)
        kl_coef = self.kl_controller.value
        rewards = self._token_rewards(scores, old_logprobs, ref_logprobs, mask, kl_coef,
                                      getattr(responses, "turn_rewards", None))
        advantages, returns = self._advantages(rewards, old_values, mask)
        rollout = Rollout(sequences=sequences, attention_mask=attention_mask, prompt_length=batch.input_ids.size(1),
                          response_mask=responses.mask.float(), action_mask=mask, logprobs=old_logprobs,
                          ref_logprobs=ref_logprobs, values=old_values, advantages=advantages, returns=returns)
        # R6. statistics; the KL controller sees "kl", the batch's mean k1 summed over each response (Eq. 9)
        stats = self._rollout_stats(rollout, scores, responses.stopped_by_eos, kl_coef)
        self.kl_controller.update(stats["kl"], len(scores))
        return rollout, {**score_stats, **getattr(responses, "stats", {}), **stats, **times}

    def _shaped_scores(self, scores: torch.Tensor, stopped_by_eos: torch.Tensor) -> torch.Tensor:
        """Eq. 11 then Eq. 12: s - p * [cut off by the length limit], then clamped to [-c, c]."""
        if self.ppo.missing_eos_penalty is not None:
            scores = scores - self.ppo.missing_eos_penalty * (~stopped_by_eos).float()
        if self.ppo.reward_clip is not None:
            scores = scores.clamp(-self.ppo.reward_clip, self.ppo.reward_clip)
        return scores

    def _token_rewards(self, scores, old_logprobs, ref_logprobs, mask, kl_coef: float,
                       turn_rewards: Optional[torch.Tensor] = None) -> torch.Tensor:
        """R4: -beta * KL_t on every action token (Eq. 7, unless kl.placement is loss), the score on the last one
        (Eq. 8) and an environment's turn rewards on each turn's last; whitened (scale only, Eq. 10) when
        ppo.whiten_rewards."""
        kl = kl_penalty(old_logprobs, ref_logprobs, self.ppo.kl.estimator)
        in_reward_coef = kl_coef if self.ppo.kl.placement == "reward" else 0.0
        rewards = per_token_rewards(scores, kl, in_reward_coef, mask)
        if turn_rewards is not None:
            rewards = rewards + turn_rewards
        if self.ppo.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False)
        return rewards

    def _advantages(self, rewards, old_values, mask) -> tuple[torch.Tensor, torch.Tensor]:
        """R5: GAE over the action tokens (Eq. 14; Eq. 3 with one turn) -> advantages, whitened over the whole batch
        when ppo.whiten_advantages (Eq. 10), and returns (never whitened: they are the critic's targets)."""
        advantages, returns = gae_over_actions(rewards, old_values, mask, self.ppo.gamma, self.ppo.lam)
        if self.ppo.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        return advantages, returns

    @staticmethod
    def _rollout_stats(rollout: Rollout, scores, stopped_by_eos, kl_coef: float) -> dict[str, float]:
        mask = rollout.action_mask
        sequence_kl = masked_sum(rollout.logprobs - rollout.ref_logprobs, mask, dim=1)  # k1, whatever kl.estimator
        lengths = mask.sum(1)
        return {
            "kl": float(sequence_kl.mean()),
            "kl_coef": kl_coef,
            "score/mean": float(scores.mean()),
            "response/length_mean": float(lengths.mean()),
            "response/eos_rate": float(stopped_by_eos.float().mean()),
            "value/mean": float(masked_mean(rollout.values, mask)),
            "value/explained_variance": float(explained_variance(rollout.values, rollout.returns, mask)),
            "response_tokens": float(lengths.sum()),
        }

    @torch.no_grad()
    def generate(self, input_ids, attention_mask, greedy: bool = False) -> Responses:
        return generate_responses(self.model.policy, input_ids, attention_mask, self.generation, self.eos_token_id,
                                  self.pad_token_id, self.generator, greedy)

    def _evaluate(self, sequences, attention_mask, prompt_length, with_reference_hidden: bool,
                  times: dict[str, float]):
        """R2: log pi_old, V, log pi_ref (and the reference's last hidden states, D10) in micro-batches of the
        training size, so rollout and training run the same shapes and get the same numbers (D3)."""
        size = self.ppo.micro_batch_size or self.ppo.minibatch_size
        olds, refs = [], []
        for i in range(0, sequences.size(0), size):
            rows = slice(i, i + size)
            with timed(times, "time/evaluate_policy_s"):
                olds.append(response_outputs(self.model, sequences[rows], attention_mask[rows], prompt_length,
                                             self.generation.temperature))
            with timed(times, "time/evaluate_reference_s"):
                refs.append(response_outputs(self.reference, sequences[rows], attention_mask[rows], prompt_length,
                                             self.generation.temperature, with_values=False,
                                             with_last_hidden=with_reference_hidden))
        ref_hidden = torch.cat([r.last_hidden for r in refs]) if with_reference_hidden else None
        return (torch.cat([o.logprobs for o in olds]), torch.cat([o.values for o in olds]),
                torch.cat([r.logprobs for r in refs]), ref_hidden)

    # ---- K epochs of minibatch steps -----------------------------------------------------------------
    def optimise(self, rollout: Rollout) -> dict[str, float]:
        """Blocks O1-O5 of docs/design.md: K epochs over freshly shuffled minibatches; the mean statistics of the
        optimizer steps taken."""
        self.model.train()
        totals: dict[str, float] = {}
        steps = skipped = 0
        for _epoch in range(self.ppo.epochs):
            # O1. a fresh order every epoch, drawn from the engine's generator (saved in a checkpoint)
            order = torch.randperm(len(rollout), generator=self.generator).to(self.device)
            for start in range(0, len(rollout), self.ppo.minibatch_size):
                step_stats = self._minibatch_step(rollout, order[start:start + self.ppo.minibatch_size])
                if step_stats is None:
                    skipped += 1
                    continue
                steps += 1
                accumulate(totals, step_stats)
        # O5. the statistics averaged over the steps taken
        stats = {key: value / max(steps, 1) for key, value in totals.items()}
        stats["optim/steps"] = steps
        stats["optim/nonfinite_skipped"] = skipped
        stats["lr"] = self.scheduler.get_last_lr()[0]
        return stats

    def _minibatch_step(self, rollout: Rollout, minibatch: torch.Tensor) -> Optional[dict[str, float]]:
        """O2-O4: one optimizer step on the rows ``minibatch``; its statistics, or None when it was skipped."""
        step_stats = self._accumulate_gradients(rollout, minibatch)
        # O3. clip the global gradient norm; a non-finite loss or gradient skips the step
        grad_norm = self._clip_gradients()
        if not self.nonfinite.check(step_stats["loss/total"], grad_norm):  # the limit-th in a row stops the run
            self.optimizer.zero_grad(set_to_none=True)
            return None
        # O4. the optimizer and learning-rate schedule step
        self.optimizer.step()
        self.scheduler.step()
        step_stats["grad_norm"] = grad_norm
        return step_stats

    def _accumulate_gradients(self, rollout: Rollout, minibatch: torch.Tensor) -> dict[str, float]:
        """O2: the minibatch's gradient in micro-batches, each loss weighted by its share of the minibatch's real
        tokens, so the sum is the gradient of one token mean over the whole minibatch (D5)."""
        micro = self.ppo.micro_batch_size or self.ppo.minibatch_size
        minibatch_tokens = rollout.action_mask[minibatch].sum().clamp(min=1.0)
        self.optimizer.zero_grad(set_to_none=True)
        step_stats: dict[str, float] = {}
        for start in range(0, len(minibatch), micro):
            rows = minibatch[start:start + micro]
            loss, micro_stats = self._loss(rollout, rows)
            share = rollout.action_mask[rows].sum() / minibatch_tokens
            (loss * share).backward()
            accumulate(step_stats, micro_stats, float(share))
        return step_stats

    def _loss(self, rollout: Rollout, rows: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of micro-batch ``rows``: Eq. 6 from Eq. 1, 2, 4, 5, plus beta * KL (Eq. 7) when kl.placement is
        loss. The new log-probs come from the same code path as log pi_old (D3)."""
        ppo = self.ppo
        mask = rollout.action_mask[rows]  # observation tokens are context: no loss, KL or entropy there
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
            "nonfinite_in_a_row": self.nonfinite.in_a_row,
        }

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.kl_controller.load_state_dict(state["kl_controller"])
        self.generator.set_state(state["generator"])
        self.nonfinite.in_a_row = int(state["nonfinite_in_a_row"])
