"""The fixed PPO engine: one update = rollout (sample, evaluate, score, advantages) then K epochs of minibatch steps.

The advantage estimator (GAE over a critic's values, or a critic-free one: GRPO, Dr. GRPO, RLOO, REINFORCE++) is a
choice inside R5, the loss aggregation one inside O2; the rest of the update is the same for every estimator.

The comments R1-R6 (rollout) and O1-O5 (optimisation) are the numbered blocks of docs/design.md.

The engine returns its statistics; logging, evaluation and checkpoints belong to the outer loop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional, Protocol, Sequence, Union

import torch
from torch import nn

from ..config import GenerationConfig, OptimConfig, PPOConfig
from ..runtime.distributed import SINGLE_PROCESS, Distributed
from ..runtime.loop import NonFiniteGuard
from ..runtime.metrics import accumulate, timed
from ..runtime.optim import clip_gradients, make_scheduler, optimizer_for
from ..runtime.precision import Precision
from .distributed import global_masked_whiten
from .functional import (
    AdaptiveKLController,
    FixedKLController,
    aggregate_tokens,
    aggregation_size,
    clipped_policy_loss,
    clipped_value_loss,
    explained_variance,
    kl_penalty,
    masked_mean,
    masked_sum,
    per_token_rewards,
    ppo_total_loss,
)
from .advantages import estimate_advantages
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
    """The buffer one update trains on (every tensor [B, R] unless noted; rows g*n .. g*n + n - 1 are the n samples
    of prompt g). ``values`` and ``returns`` are None without a critic."""

    sequences: torch.Tensor  # [B, P+R]
    attention_mask: torch.Tensor  # [B, P+R]
    prompt_length: int
    response_mask: torch.Tensor  # float 0/1: every token after the prompt
    action_mask: torch.Tensor  # float 0/1: the model's tokens among them (all of them without an environment)
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: Optional[torch.Tensor]
    advantages: torch.Tensor
    returns: Optional[torch.Tensor]

    def __len__(self) -> int:
        return self.sequences.size(0)


class Scorer(Protocol):
    """Scores a rollout's responses in two calls, so that scoring can overlap sampling:

    - ``scorer.start(responses, records) -> handle`` as each generation chunk is done (``records``: the chunk's
      rows of :attr:`PromptBatch.records`); it may hand the chunk to reward workers and return at once;
    - ``scorer.finish(handles, reference_hidden) -> (scores [B], statistics)`` once the whole batch is sampled and
      evaluated, with the handles in row order.

    A scorer declares ``reads_reference_hidden``: when true, the engine also asks the frozen reference for its final
    hidden state at each sequence's last real token and passes it as ``reference_hidden`` [B, H] (otherwise None),
    so a learned reward head on that backbone needs no forward of its own (docs/design.md, D10).
    """

    reads_reference_hidden: bool

    def start(self, responses: Responses, records: Sequence) -> Any: ...

    def finish(self, handles: Sequence[Any], reference_hidden: Optional[torch.Tensor]
               ) -> tuple[torch.Tensor, dict[str, float]]: ...


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
        eos_token_id: Union[int, Sequence[int]],
        pad_token_id: int,
        generator: torch.Generator,
        max_nonfinite_steps: int = 3,
        episodes: Optional[EpisodeRunner] = None,
        distributed: Distributed = SINGLE_PROCESS,
        precision: Optional[Precision] = None,
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
        # the constant C of token_sum_constant (Eq. 17): the longest response (episode) an update can hold
        self.aggregation_constant = generation.max_new_tokens if episodes is None else episodes.episode_tokens
        self.dist = distributed  # one process: every collective is the identity
        self.nonfinite = NonFiniteGuard(max_nonfinite_steps, advice="stopping. Lower optim.lr, set "
                                        "optim.max_grad_norm, or check the rewards' scale")
        self.kl_controller = make_kl_controller(ppo)
        self.optimizer = optimizer_for(model, optim)
        if ppo.advantage == "gae" and not model.has_critic:
            raise ValueError("ppo.advantage gae needs a critic (model.critic shared or separate)")
        steps_per_update = ppo.epochs * (ppo.rollout_samples // ppo.minibatch_size)
        self.scheduler = make_scheduler(self.optimizer, steps_per_update * total_updates, optim.warmup_steps,
                                        optim.schedule)
        self.device = next(model.parameters()).device
        self.precision = precision or Precision("fp32", self.device)  # train.precision: autocast, fp16 loss scale

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
        # R1. sample responses from the current policy (KV cache; a row stops at its first eos); each chunk is
        # handed to the scorer as soon as it is sampled, so reward workers score it while the next is sampled
        handles = []

        def start_scoring(rows: slice, chunk: Responses) -> None:
            handles.append(scorer.start(chunk, batch.records[rows]))

        overlap = self.generation.score_while_sampling
        with timed(times, "time/generate_s"), self.precision.autocast():
            if batch.states is None:
                responses = self.generate(batch.input_ids, batch.attention_mask,
                                          on_chunk=start_scoring if overlap else None)
            else:  # environment episodes, turn after turn (ppo_core.ppo.episodes), scored once finished
                responses = self.episodes.play(self.model.policy, batch.records, batch.states, self.generator)
        sequences = torch.cat([batch.input_ids, responses.tokens], dim=1)
        attention_mask = torch.cat([batch.attention_mask.bool(), responses.mask], dim=1)
        mask = (responses.mask if responses.action_mask is None else responses.action_mask).float()
        # R2. log pi_old, V(s_t) from the policy and log pi_ref from the frozen reference: one code path
        with timed(times, "time/evaluate_s"), self.precision.autocast():
            old_logprobs, old_values, ref_logprobs, ref_hidden = self._evaluate(
                sequences, attention_mask, batch.input_ids.size(1), scorer.reads_reference_hidden, times)
        # R3. sequence scores: the scorer's total per sample, missing-eos penalty and clip (Eq. 11, 12)
        with timed(times, "time/score_s"):  # what is left of scoring once sampling and R2 are done
            if not handles:  # scored after sampling: overlap off, or an environment's finished episodes
                start_scoring(slice(None), responses)
            scores, score_stats = scorer.finish(handles, ref_hidden)
        scores = self._shaped_scores(scores.to(self.device, torch.float32), responses.stopped_by_eos)
        # R4. per-token rewards on the action tokens (Eq. 8; an environment's turn rewards too) -> R5. advantages
        # over the action tokens (Eq. 18, 14-16, 10) and the critic's returns
        kl_coef = self.kl_controller.value
        rewards = self._token_rewards(scores, old_logprobs, ref_logprobs, mask, kl_coef,
                                      getattr(responses, "turn_rewards", None))
        advantages, returns, advantage_stats = self._advantages(rewards, old_values, mask)
        rollout = Rollout(sequences=sequences, attention_mask=attention_mask, prompt_length=batch.input_ids.size(1),
                          response_mask=responses.mask.float(), action_mask=mask, logprobs=old_logprobs,
                          ref_logprobs=ref_logprobs, values=old_values, advantages=advantages, returns=returns)
        # R6. statistics; the KL controller sees "kl", the batch's mean k1 summed over each response (Eq. 9)
        stats = {**self._rollout_stats(rollout, scores, responses.stopped_by_eos, kl_coef), **advantage_stats}
        stats = self.dist.reduce_stats({**score_stats, **getattr(responses, "stats", {}), **stats, **times})
        self.kl_controller.update(stats["kl"], len(scores) * self.dist.world_size)
        return rollout, stats

    def _shaped_scores(self, scores: torch.Tensor, stopped_by_eos: torch.Tensor) -> torch.Tensor:
        """Eq. 11 then Eq. 12: s - p * [cut off by the length limit], then clamped to [-c, c]."""
        if self.ppo.missing_eos_penalty is not None:
            scores = scores - self.ppo.missing_eos_penalty * (~stopped_by_eos).float()
        if self.ppo.reward_clip is not None:
            scores = scores.clamp(-self.ppo.reward_clip, self.ppo.reward_clip)
        return scores

    def _token_rewards(self, scores, old_logprobs, ref_logprobs, mask, kl_coef: float,
                       turn_rewards: Optional[torch.Tensor] = None) -> torch.Tensor:
        """R4: -beta * KL_t on every action token (Eq. 7, unless the KL is in the loss), the score on the last one
        (Eq. 8) and an environment's turn rewards on each turn's last; whitened (scale only, Eq. 10) when
        ppo.whiten_rewards."""
        kl = kl_penalty(old_logprobs, ref_logprobs, self.ppo.kl_estimator)
        in_reward_coef = kl_coef if self.ppo.kl_placement == "reward" else 0.0
        rewards = per_token_rewards(scores, kl, in_reward_coef, mask)
        if turn_rewards is not None:
            rewards = rewards + turn_rewards
        if self.ppo.whiten_rewards:
            rewards = global_masked_whiten(rewards, mask, self.dist, shift_mean=False)
        return rewards

    def _advantages(self, rewards, old_values, mask) -> tuple[torch.Tensor, Optional[torch.Tensor], dict]:
        """R5: advantages by ppo.advantage (ppo_core.ppo.advantages.estimate_advantages), whitened over the whole
        batch when the estimator does it (Eq. 10); the critic's returns (gae only; never whitened: they are its
        targets); the estimator's statistics."""
        ppo = self.ppo
        advantages, returns, stats = estimate_advantages(ppo.advantage, rewards, old_values, mask, ppo.gamma, ppo.lam,
                                                         ppo.samples_per_prompt)
        if ppo.whitens_advantages:
            advantages = global_masked_whiten(advantages, mask, self.dist)
        return advantages, returns, stats

    @staticmethod
    def _rollout_stats(rollout: Rollout, scores, stopped_by_eos, kl_coef: float) -> dict[str, float]:
        mask = rollout.action_mask
        sequence_kl = masked_sum(rollout.logprobs - rollout.ref_logprobs, mask, dim=1)  # k1, whatever kl.estimator
        lengths = mask.sum(1)
        stats = {
            "kl": float(sequence_kl.mean()),
            "kl_coef": kl_coef,
            "score/mean": float(scores.mean()),
            "response/length_mean": float(lengths.mean()),
            "response/eos_rate": float(stopped_by_eos.float().mean()),
            "response_tokens": float(lengths.sum()),
        }
        if rollout.values is not None:  # no value statistics without a critic
            stats["value/mean"] = float(masked_mean(rollout.values, mask))
            stats["value/explained_variance"] = float(explained_variance(rollout.values, rollout.returns, mask))
        return stats

    @torch.no_grad()
    def generate(self, input_ids, attention_mask, greedy: bool = False, on_chunk=None) -> Responses:
        return generate_responses(self.model.policy, input_ids, attention_mask, self.generation, self.eos_token_id,
                                  self.pad_token_id, self.generator, greedy, on_chunk=on_chunk)

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
        values = torch.cat([o.values for o in olds]) if self.model.has_critic else None
        return torch.cat([o.logprobs for o in olds]), values, torch.cat([r.logprobs for r in refs]), ref_hidden

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
        self.optimizer.zero_grad(set_to_none=True)  # not held through the next rollout (README, "Memory")
        return stats

    def _minibatch_step(self, rollout: Rollout, minibatch: torch.Tensor) -> Optional[dict[str, float]]:
        """O2-O4: one optimizer step on the rows ``minibatch``; its statistics, or None when it was skipped."""
        step_stats = self._accumulate_gradients(rollout, minibatch)
        step_stats = self.dist.sum_gradients(self.model.parameters(), step_stats)  # the sum over ranks
        # O3. clip the global gradient norm; a non-finite loss or gradient skips the step
        self.precision.unscale(self.optimizer)
        grad_norm = self._clip_gradients()
        overflow = self.precision.overflowed(step_stats["loss/total"], grad_norm)  # fp16's scale search: no fault
        if overflow or not self.nonfinite.check(step_stats["loss/total"], grad_norm):  # the limit-th in a row stops
            self.precision.skip_step()
            self.optimizer.zero_grad(set_to_none=True)
            return None
        # O4. the optimizer and learning-rate schedule step
        self.precision.step(self.optimizer)
        self.scheduler.step()
        step_stats["grad_norm"] = grad_norm
        return step_stats

    def _accumulate_gradients(self, rollout: Rollout, minibatch: torch.Tensor) -> dict[str, float]:
        """O2: the minibatch's gradient in micro-batches, each loss weighted by its share of what the loss
        aggregation divides by (Eq. 17: real tokens, responses, or rows), so the sum is the gradient of one loss over
        the whole minibatch (D5). The loss statistics are weighted the same way; the per-token ones (entropy,
        clipfrac, approx_kl) by the share of real tokens, so they stay token means over the minibatch."""
        micro = self.ppo.micro_batch_size or self.ppo.minibatch_size
        how, mask = self.ppo.aggregation, rollout.action_mask
        minibatch_size = self.dist.all_reduce_sum(aggregation_size(mask[minibatch], how)).clamp(min=1.0)
        minibatch_tokens = self.dist.all_reduce_sum(mask[minibatch].sum()).clamp(min=1.0)  # over every rank
        self.optimizer.zero_grad(set_to_none=True)
        step_stats: dict[str, float] = {}
        for start in range(0, len(minibatch), micro):
            rows = minibatch[start:start + micro]
            with self.precision.autocast():
                loss, micro_stats = self._loss(rollout, rows)
            share = aggregation_size(mask[rows], how) / minibatch_size
            self.precision.backward(loss * share)
            token_share = float(mask[rows].sum() / minibatch_tokens)
            for key, value in micro_stats.items():
                weight = float(share) if key.startswith("loss/") else token_share
                step_stats[key] = step_stats.get(key, 0.0) + value * weight
        return step_stats

    def _loss(self, rollout: Rollout, rows: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of micro-batch ``rows``: Eq. 6 from Eq. 1, 2, 4 (with a critic), 5, plus beta * KL (Eq. 7) when
        the KL is in the loss; every term aggregated over the tokens as ppo.loss_aggregation says (Eq. 17). The new
        log-probs come from the same code path as log pi_old (D3)."""
        ppo = self.ppo
        mask = rollout.action_mask[rows]  # observation tokens are context: no loss, KL or entropy there
        how, constant = ppo.aggregation, self.aggregation_constant
        new = response_outputs(self.model, rollout.sequences[rows], rollout.attention_mask[rows],
                               rollout.prompt_length, self.generation.temperature, with_entropy=True,
                               entropy_grad=ppo.entropy_coef != 0)
        policy_loss, clipfrac, approx_kl = clipped_policy_loss(
            new.logprobs, rollout.logprobs[rows], rollout.advantages[rows], mask, ppo.clip_range, how, constant)
        value_loss, value_stats = 0.0, {}
        if rollout.values is not None:  # no value head forward, loss or statistics without a critic
            value_loss, vf_clipfrac = clipped_value_loss(
                new.values, rollout.values[rows], rollout.returns[rows], mask, ppo.clip_range_value, how, constant)
            value_stats = {"loss/value": value_loss.item(), "value/clipfrac": vf_clipfrac.item()}
        entropy = aggregate_tokens(new.entropy, mask, how, constant)
        loss = ppo_total_loss(policy_loss, value_loss, entropy, ppo.value_coef, ppo.entropy_coef)
        if ppo.kl_placement == "loss":
            kl = aggregate_tokens(kl_penalty(new.logprobs, rollout.ref_logprobs[rows], ppo.kl_estimator), mask,
                                  how, constant)
            loss = loss + self.kl_controller.value * kl
        stats = {
            "loss/total": loss.item(),
            "loss/policy": policy_loss.item(),
            **value_stats,
            "entropy": masked_mean(new.entropy, mask).item(),
            "clipfrac": clipfrac.item(),
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
            "grad_scaler": self.precision.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.kl_controller.load_state_dict(state["kl_controller"])
        self.generator.set_state(state["generator"])
        self.nonfinite.in_a_row = int(state["nonfinite_in_a_row"])
        self.precision.load_state_dict(state.get("grad_scaler", {}))
