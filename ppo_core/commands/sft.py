"""Supervised fine-tuning on the records' solutions (`ppo-core sft`), from the same run config as PPO.

Each record becomes one sequence laid out exactly as a PPO rollout lays it out:

    [ left-padded prompt (ppo_core.data.prompts.encode_records: the ids the rollout sees) | solution + eos, right-padded ]

A multi-turn record (``messages`` holding assistant turns after the first user turn) is laid out as an
environment's episode (``ppo_core.data.turns.transcript_targets``): the prompt is the conversation up to the
first assistant turn, the response every later turn, and only the assistant turns' tokens (each + eos) are
targets; the user or tool turns between them are context, tokenised as an episode's observations.

The loss is the token-mean negative log-likelihood of the target tokens only:

    L_SFT = -(1/N) * sum_{t in response} log pi_theta(y_t | prompt, y_<t),   N = number of response tokens

Prompt and padding positions carry the label -100 (``IGNORE_INDEX``) and never count. The response is
``tokenizer(solution, add_special_tokens=False) + [eos]`` (the first solution when a record lists several).

The run directory gets ``config.yaml``, ``metrics.jsonl`` (one object per logged step), atomic checkpoints
under ``checkpoints/step-<step>`` (same layout rules as PPO: ``ppo_core.runtime.checkpoints``), and ``final/``:
the model with ``save_pretrained`` plus its tokenizer, which ``AutoModelForCausalLM`` loads and which
``ppo-core train`` can start from (``model.path: <output_dir>/final``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import RunConfig
from ..config.sft_section import check_sft_options, check_stop_can_fire, stop_condition_met
from ..data.prompts import EncodedPrompt, encode_record, left_pad, long_prompt_stats
from ..data.stream import PromptStream, take_records
from ..data.turns import assistant_turns_start, first_prompt, transcript_targets
from ..errors import DataError
from ..modeling.loading import disable_dropout, fit_to_context, load_causal_lm, save_model
from ..plugin.contract import Record
from ..ppo.rollout import position_ids_from_mask
from ..rewards.composer import Composer
from ..runtime import checkpoints as ckpt
from ..runtime.loop import NONFINITE, NonFiniteGuard, RunLoop, open_run_dir
from ..runtime.rundir import claim_run_dir
from ..runtime.metrics import Progress
from ..runtime.optim import clip_gradients, make_scheduler, optimizer_for
from .train import load_run_inputs, run_hooks

IGNORE_INDEX = -100
MODEL_DIR = "model"
SUMMARY_KEYS = ("loss", "lr", "eval/loss", "eval/exact_match")
# fields that may change between an SFT run and its resume without changing what is computed
RESUMABLE_PREFIXES = ("rewards", "ppo.", "generation.", "plugins.", "train.updates", "train.save_every",
                      "train.keep_checkpoints", "train.progress", "train.tensorboard", "train.loggers",
                      "train.eval_", "train.output_dir",
                      "train.threads", "sft.save_every", "sft.log_every", "sft.eval_every", "sft.eval_samples",
                      "sft.output_dir")


# ---- batches -----------------------------------------------------------------------------------------
@dataclass
class SFTBatch:
    """Left-padded prompts followed by right-padded responses; ``labels`` is -100 outside the responses."""

    input_ids: torch.Tensor  # [B, P+R]
    attention_mask: torch.Tensor  # [B, P+R]
    labels: torch.Tensor  # [B, P+R], IGNORE_INDEX on prompt and padding
    prompt_length: int  # P

    @property
    def response_tokens(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())

    def rows(self, index: slice) -> "SFTBatch":
        return SFTBatch(self.input_ids[index], self.attention_mask[index], self.labels[index], self.prompt_length)

    def to(self, device: torch.device) -> "SFTBatch":
        return SFTBatch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device),
                        self.prompt_length)


def target_solution(record: Record, where: str = "dataset") -> str:
    """The solution SFT imitates: the record's solution, or the first one when it lists several (a multi-turn
    record's assistant turns need none: the empty string)."""
    if assistant_turns_start(record) is not None:
        return ""
    solutions = record.solutions
    if not solutions:
        prompt = record.prompt_text if len(record.prompt_text) <= 60 else record.prompt_text[:57] + "..."
        raise DataError(f"{where}: record with prompt {prompt!r} has no solution; SFT needs one per record")
    return solutions[0]


def response_ids(solution: str, tokenizer, max_tokens: Optional[int] = None) -> list[int]:
    """``tokenizer(solution, add_special_tokens=False) + [eos]``, cut to ``max_tokens`` when longer."""
    ids = list(tokenizer(solution, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
    return ids[:max_tokens] if max_tokens else ids


def build_batch(records: Sequence[Record], tokenizer, config: RunConfig, where: str = "dataset") -> SFTBatch:
    """Tokenize records into an :class:`SFTBatch` whose prompt part is exactly the PPO rollout's prompt batch."""
    return batch_of_prompts(encode_sft_prompts(records, tokenizer, config), tokenizer, config, where)


def encode_sft_prompts(records: Sequence[Record], tokenizer, config: RunConfig) -> list[EncodedPrompt]:
    """Each record's prompt encoded as the rollout encodes it (a transcript's: its first prompt, held to
    ``data.max_prompt_tokens`` alone), keeping the whole record for its targets; skipped ones left out."""
    encoded = []
    for record in records:
        prompt = encode_record(first_prompt(record), tokenizer, config.data)
        if prompt is not None:
            prompt.record = record
            encoded.append(prompt)
    return encoded


def batch_of_prompts(encoded: Sequence[EncodedPrompt], tokenizer, config: RunConfig, where: str = "dataset"
                     ) -> SFTBatch:
    """Encoded prompts, each followed by its record's solution + eos: an :class:`SFTBatch`."""
    max_response = config.sft.max_response_tokens or config.generation.max_new_tokens
    prompts, responses, targets = [], [], []
    for prompt in encoded:
        if assistant_turns_start(prompt.record) is None:
            ids = response_ids(target_solution(prompt.record, where), tokenizer)
            is_target = [True] * len(ids)
        else:  # a transcript: its prompt was encoded from the conversation before its first assistant turn
            stops = config.environment.stop_strings if config.environment else ()
            _, ids, is_target = transcript_targets(prompt.record, tokenizer, config.data.chat_template, stops)
        prompts.append(prompt)
        responses.append(ids[:max_response])
        targets.append(is_target[:max_response])
    prompt_ids, prompt_mask = left_pad([p.ids for p in prompts], tokenizer.pad_token_id)
    width = max(len(r) for r in responses)
    response = torch.full((len(responses), width), tokenizer.pad_token_id, dtype=torch.long)
    response_mask = torch.zeros((len(responses), width), dtype=torch.long)
    response_labels = torch.full((len(responses), width), IGNORE_INDEX, dtype=torch.long)
    for i, (ids, is_target) in enumerate(zip(responses, targets)):
        response[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        response_mask[i, : len(ids)] = 1
        response_labels[i, : len(ids)] = torch.where(torch.tensor(is_target), response[i, : len(ids)], IGNORE_INDEX)
    labels = torch.cat([torch.full_like(prompt_ids, IGNORE_INDEX), response_labels], dim=1)
    return SFTBatch(torch.cat([prompt_ids, response], dim=1), torch.cat([prompt_mask, response_mask], dim=1),
                    labels, prompt_ids.size(1))


def response_nll(model: nn.Module, batch: SFTBatch) -> tuple[torch.Tensor, int]:
    """Sum over response tokens of -log pi(y_t | y_<t), and how many tokens were summed."""
    position_ids = position_ids_from_mask(batch.attention_mask)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=position_ids,
                   use_cache=False).logits
    # the logits at position t predict token t+1: response tokens are predicted from P-1 .. end-1
    logits = logits[:, batch.prompt_length - 1 : -1, :].float()
    targets = batch.labels[:, batch.prompt_length :]
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX,
                          reduction="sum")
    return nll, int((targets != IGNORE_INDEX).sum())


@torch.no_grad()
def mean_loss(model: nn.Module, records: Sequence[Record], tokenizer, config: RunConfig, device: torch.device,
              batch_size: Optional[int] = None) -> float:
    """Token-mean response NLL over ``records`` (teacher forcing), e.g. the eval split's loss."""
    was_training = model.training
    model.eval()
    size = batch_size or config.sft.micro_batch_size or config.sft.batch_size
    total, tokens = 0.0, 0
    for start in range(0, len(records), size):
        nll, n = response_nll(model, build_batch(records[start:start + size], tokenizer, config).to(device))
        total, tokens = total + float(nll), tokens + n
    model.train(was_training)
    return total / max(tokens, 1)


# ---- the run -----------------------------------------------------------------------------------------
@dataclass
class SFTRun:
    config: RunConfig
    tokenizer: Any
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    records: PromptStream
    train_size: int
    total_steps: int
    eval_records: list[Record]
    composer: Composer
    device: torch.device
    plugins: Any = None
    context: Any = None
    step: int = 0
    extra: dict = field(default_factory=dict)


def output_dir(config: RunConfig) -> Path:
    return Path(config.sft.output_dir or config.train.output_dir)


def planned_steps(config: RunConfig, train_size: int) -> int:
    """``sft.steps``, or enough steps of ``sft.batch_size`` records for ``sft.epochs`` passes."""
    if config.sft.steps:
        return config.sft.steps
    return max(1, math.ceil(config.sft.epochs * train_size / config.sft.batch_size))


def build_sft(config: RunConfig, extra_plugins: Iterable = (), source: str = "config") -> SFTRun:
    """Load plugins, tokenizer, model and data; nothing is written."""
    check_sft_options(config, source)
    torch.manual_seed(config.train.seed)
    inputs = load_run_inputs(config, extra_plugins, source)
    device, tokenizer, dataset, composer = inputs.device, inputs.tokenizer, inputs.dataset, inputs.composer
    train_size = 0
    for record in dataset.records("train"):  # every record needs a solution: fail before anything is written
        train_size += 1
        target_solution(record, f"{source}: data: train record {train_size} of dataset '{config.data.dataset}'")
    if train_size == 0:
        raise DataError(f"{source}: data: the train split of dataset '{config.data.dataset}' has no records")
    eval_records: list[Record] = []
    if config.sft.eval_every:
        eval_records = take_records(dataset, "eval", config.sft.eval_samples)
    check_stop_can_fire(config.sft.stop_at, config.data.dataset, eval_records, {term.name for term in composer.terms},
                        source)
    model = load_causal_lm(config.model.path, config.model.trust_remote_code, tokenizer).to(device)
    if not config.sft.dropout:
        disable_dropout(model)
    # not fused (yet): the fused kernel rounds differently and moves the demo's published SFT numbers
    optimizer = optimizer_for(model, config.optim, lr=config.sft.lr, fused=False)
    total_steps = planned_steps(config, train_size)
    scheduler = make_scheduler(optimizer, total_steps, config.optim.warmup_steps, config.optim.schedule)
    records = PromptStream(dataset, "train", config.train.seed, config.data.shuffle, name=config.data.dataset)
    return SFTRun(config, tokenizer, model, optimizer, scheduler, records, train_size,
                  total_steps, eval_records, composer, device, inputs.plugins, inputs.context)


def sft_step(run: SFTRun) -> dict[str, float]:
    """One optimizer step on the next ``sft.batch_size`` records (micro-batches weighted by their tokens)."""
    config = run.config
    run.model.train()
    records = run.records.take_prompts(config.sft.batch_size, run.tokenizer, config.data, prompt_of=first_prompt)
    batch = batch_of_prompts(records, run.tokenizer, config, where=f"dataset '{config.data.dataset}'").to(run.device)
    tokens = max(batch.response_tokens, 1)
    micro = config.sft.micro_batch_size or config.sft.batch_size
    run.optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for start in range(0, len(records), micro):
        nll, _n = response_nll(run.model, batch.rows(slice(start, start + micro)))
        (nll / tokens).backward()
        total += float(nll.detach())
    grad_norm = clip_gradients(run.model.parameters(), config.optim.max_grad_norm)
    loss = total / tokens
    stats = {"loss": loss, "grad_norm": grad_norm, "response_tokens": float(batch.response_tokens),
             "lr": run.scheduler.get_last_lr()[0], **long_prompt_stats(records)}
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        run.optimizer.zero_grad(set_to_none=True)
        stats[NONFINITE] = 1.0
        return stats
    run.optimizer.step()
    run.scheduler.step()
    return stats


def evaluate_during_sft(run: SFTRun) -> dict[str, float]:
    """The eval split's teacher-forced loss, and greedy exact match / reward means (``sft.eval_every``)."""
    from .evaluate import evaluate_records

    if not run.eval_records:
        return {}
    stats = {"eval/loss": mean_loss(run.model, run.eval_records, run.tokenizer, run.config, run.device)}
    result = evaluate_records(run.model, run.tokenizer, run.eval_records, run.config, run.composer, run.device,
                              decodings=("greedy",))
    greedy = result["numbers"]["greedy"]
    stats["eval/exact_match"] = greedy["exact_match"]
    for name, value in greedy["rewards"].items():
        stats[f"eval/reward/{name}"] = value
    return stats


def stop_early(stop_at: Optional[str], line: dict) -> bool:
    """``sft.stop_at`` met by an evaluation's metrics line: say so (one line) and stop."""
    if stop_at is None or not stop_condition_met(stop_at, line):
        return False
    print(f"sft: stopping at step {line['step']}: {stop_at} is met", flush=True)
    return True


# ---- saving ------------------------------------------------------------------------------------------
def save_checkpoint(run: SFTRun, run_dir: Path, metrics_lines: int) -> Path:
    def write(tmp: Path) -> None:
        save_model(run.model, run.tokenizer, tmp / MODEL_DIR)
        ckpt.save_torch_state(tmp / "optimizer.pt", {"optimizer": run.optimizer.state_dict(),
                                                      "scheduler": run.scheduler.state_dict()})
        ckpt.save_tensors(tmp / "rng.safetensors", {"torch": torch.get_rng_state()})
        ckpt.write_json(tmp / ckpt.STATE_FILE, {
            "step": run.step,
            "metrics_lines": metrics_lines,
            "data_position": run.records.position,
            "config": run.config.model_dump(mode="json"),
        })

    return ckpt.save_checkpoint(run_dir, run.step, run.config.train.keep_checkpoints, write, unit="step")


def load_checkpoint(run: SFTRun, path: Path) -> int:
    """Restore ``run`` from a checkpoint; returns how many metrics lines belong to it."""
    from transformers import AutoModelForCausalLM

    state = ckpt.read_json(path / ckpt.STATE_FILE)
    ckpt.check_resumable(state["config"], run.config.model_dump(mode="json"), path, RESUMABLE_PREFIXES)
    saved = AutoModelForCausalLM.from_pretrained(path / MODEL_DIR, dtype=torch.float32)
    run.model.load_state_dict(saved.state_dict())
    torch_state = ckpt.load_torch_state(path / "optimizer.pt")
    run.optimizer.load_state_dict(torch_state["optimizer"])
    run.scheduler.load_state_dict(torch_state["scheduler"])
    torch.set_rng_state(ckpt.load_tensors(path / "rng.safetensors")["torch"])
    run.records.seek(state["data_position"])
    run.step = int(state["step"])
    return int(state["metrics_lines"])


# ---- the loop ----------------------------------------------------------------------------------------
class StepWindow:
    """SFT logs every ``sft.log_every`` steps: the token-mean loss, mean grad norm and throughput since the
    last line, the last step's learning rate."""

    def __init__(self, batch_size: int, train_size: int):
        self.batch_size, self.train_size = batch_size, train_size
        self._reset()

    def _reset(self) -> None:
        self.nll = self.tokens = self.time = self.grad_norm = 0.0
        self.steps = 0

    def add(self, stats: dict[str, float], elapsed: float) -> None:
        self.nll += stats["loss"] * stats["response_tokens"]
        self.tokens += stats["response_tokens"]
        self.time += elapsed
        self.grad_norm += stats["grad_norm"]
        self.steps += 1
        self.lr = stats["lr"]

    def line(self, done: int) -> dict:
        record = {
            "step": done,
            "epoch": done * self.batch_size / self.train_size,
            "loss": self.nll / max(self.tokens, 1.0),
            "lr": self.lr,
            "grad_norm": self.grad_norm / self.steps,
            "response_tokens": self.tokens,
            "tokens_per_s": self.tokens / max(self.time, 1e-9),
            "time/step_s": self.time / self.steps,
        }
        self._reset()
        return record


def train_sft(config: RunConfig, resume: bool = False, overwrite: bool = False, extra_plugins: Iterable = (),
              source: str = "config", progress_stream=None, callbacks: Sequence = ()) -> Path:
    """Run SFT as configured; returns the directory of the final model (``<output_dir>/final``).
    ``callbacks``: objects implementing the run hooks (ppo_core.plugin.hookspecs)."""
    config = fit_to_context(config, config.model.path, source, "sft")
    field_name = "sft.output_dir" if config.sft.output_dir else "train.output_dir"
    with claim_run_dir(output_dir(config), resume, overwrite, field_name) as run_dir:
        run = build_sft(config, extra_plugins, source)  # the old run stays in place until the new one has saved
        with run.composer:  # its reward workers stop with the run
            ckpt.check_resume_progress(run_dir.work, resume, run.total_steps, "step",
                                       "sft.steps (or sft.epochs)")
            hooks = run_hooks(run.plugins, config, run.context, "sft", run_dir.work, run.total_steps, callbacks,
                              source)  # an unknown logger fails before anything is written
            log = open_run_dir(run_dir, config, resume, lambda path: load_checkpoint(run, path))
            progress = Progress(run.total_steps, config.train.progress, label="step", keys=SUMMARY_KEYS,
                                **({"stream": progress_stream} if progress_stream else {}))
            sft = config.sft

            def checkpoint(directory: Path, step: int, metrics_lines: int) -> Path:
                run.step = step
                return save_checkpoint(run, directory, metrics_lines)

            loop = RunLoop(
                total=run.total_steps, step=lambda: sft_step(run), window=StepWindow(sft.batch_size, run.train_size),
                log=log, progress=progress,
                guard=NonFiniteGuard(config.train.max_nonfinite_steps, where="sft: ", unit="steps",
                                     advice="lower sft.lr or optim.lr"),
                save_checkpoint=checkpoint, save_every=sft.save_every, log_every=sft.log_every,
                eval_every=sft.eval_every, evaluate=lambda: evaluate_during_sft(run),
                stop_when=lambda line: stop_early(sft.stop_at, line),
                directory=run_dir, write_final=lambda tmp: save_model(run.model, run.tokenizer, tmp), hooks=hooks,
            )
            return loop.run(start=run.step)
