"""The outer loop: config -> plugins -> models -> engine; logging, checkpoints and the final model."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import torch

from ..config import RunConfig
from ..data.prompts import left_pad, long_prompt_stats, make_samples
from ..data.stream import PromptStream, take_records
from ..errors import ConfigError, TrainingError
from ..modeling.loading import end_of_response_ids, fit_to_context, load_tokenizer, resolve_device, save_model
from ..modeling.lora import MERGED_DIR, frozen_reference, is_adapter_model, load_adapter_weights, merged_copy
from ..plugin.callbacks import RunHooks, RunInfo, attach_callbacks
from ..plugin.contract import RunContext
from ..plugin.loading import PluginSet, load_plugins
from ..ppo.actor_critic import ActorCritic, build_actor_critic
from ..ppo.engine import PPOEngine, PromptBatch
from ..ppo.environment import build_dataset, build_environment, dataset_label
from ..ppo.episodes import EpisodeRunner, Episodes
from ..ppo.rollout import Responses
from ..rewards.composer import Composer, build_composer
from ..rewards.hacking import HackingWatch
from ..runtime import checkpoints as ckpt
from ..runtime.distributed import (SINGLE_PROCESS, Distributed, join_process_group, open_rank_run_dir,
                                   rank_run_dir)
from ..runtime.fsdp import (check_fsdp, gathered_training_state, load_optimizer_state, load_weights, peer_failures,
                            shard_modules, sharded_step)
from ..runtime.loop import RunLoop, open_run_dir
from ..runtime.precision import Precision, check_precision
from ..runtime.rundir import claim_run_dir
from ..runtime.metrics import Progress, read_metrics

# fields that may change between a run and its resume without changing what is computed
RESUMABLE_CHANGES = ("train.updates", "train.save_every", "train.keep_checkpoints", "train.progress",
                     "train.tensorboard", "train.loggers", "train.eval_", "train.output_dir", "train.threads", "sft.")


@dataclass
class Run:
    """Everything a training run is built from."""

    config: RunConfig
    plugins: PluginSet
    tokenizer: Any
    model: ActorCritic
    engine: PPOEngine
    composer: Composer
    prompts: PromptStream
    device: torch.device
    context: Optional[RunContext] = None
    dataset: Any = None
    episodes: Optional[EpisodeRunner] = None  # the environment's episodes (config.environment)
    update: int = 0
    extra_state: dict = field(default_factory=dict)
    dist: Distributed = SINGLE_PROCESS  # torchrun's ranks (runtime/distributed.py)


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


@dataclass
class RunInputs:
    """What every command that trains or scores starts from: device, plugins, tokenizer, dataset, rewards."""

    device: torch.device
    plugins: PluginSet
    tokenizer: Any
    context: RunContext
    dataset: Any
    composer: Composer


def load_run_inputs(config: RunConfig, extra_plugins: Iterable = (), source: str = "config") -> RunInputs:
    """Threads, device, plugins, tokenizer, the dataset and the composer, as the config says."""
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    device = resolve_device(config.model.device)
    plugins = load_plugins(config.plugins.allow, config.plugins.block, extra=extra_plugins)
    tokenizer = load_tokenizer(config.model.tokenizer or config.model.path, config.model.trust_remote_code,
                               field="model.tokenizer" if config.model.tokenizer else "model.path")
    context = RunContext(device=str(device), seed=config.train.seed, tokenizer=tokenizer,
                         policy_path=config.model.path, trust_remote_code=config.model.trust_remote_code)
    dataset = build_dataset(config, plugins.registry, context, source)
    composer = build_composer(config.rewards, plugins.registry, context, source)
    return RunInputs(device, plugins, tokenizer, context, dataset, composer)


def build_run(config: RunConfig, extra_plugins: Iterable = (), source: str = "config",
              dist: Distributed = SINGLE_PROCESS) -> Run:
    """Load plugins, tokenizer, models and data and put the engine together (nothing is written)."""
    check_precision(config.train.precision, config.train.precision_force, resolve_device(config.model.device), source)
    generator = seed_everything(config.train.seed)
    inputs = load_run_inputs(config, extra_plugins, source)
    device, plugins, tokenizer, dataset, composer = (inputs.device, inputs.plugins, inputs.tokenizer,
                                                     inputs.dataset, inputs.composer)
    model = build_actor_critic(config.model, tokenizer, config.train.seed).to(device)
    dist.broadcast_parameters(model)
    dist.seed_rank(generator, config.train.seed)  # rank r > 0 samples with seed + r
    reference = frozen_reference(model.policy)  # with LoRA: the policy with its adapters off
    if dist.sharded:  # train.parallel fsdp: the trained modules and the reference in 1/N shards, before the optimizer
        shard_modules([model.policy, model.value_head, reference], device)
    episodes = None
    if config.environment is not None:
        try:
            environment = build_environment(config.environment, plugins.registry, inputs.context, source)
        except BaseException:
            composer.close()
            raise
        episodes = EpisodeRunner(environment, config.environment, config.data, config.generation, tokenizer)
    engine = PPOEngine(model, reference, dist.local_ppo(config.ppo, source), config.generation, config.optim,
                       config.train.updates, eos_token_id=end_of_response_ids(tokenizer, model.policy),
                       pad_token_id=tokenizer.pad_token_id, generator=generator,
                       max_nonfinite_steps=config.train.max_nonfinite_steps, episodes=episodes, distributed=dist,
                       precision=Precision(config.train.precision, device))
    prompts = PromptStream(dataset, "train", config.train.seed, config.data.shuffle,
                           name=config.data.dataset or f"environment '{config.environment.name}'")
    return Run(config, plugins, tokenizer, model, engine, composer, prompts, device, inputs.context, dataset,
               episodes, dist=dist)


def next_prompt_batch(run: Run) -> PromptBatch:
    """``ppo.rollout_batch_size`` prompts, each repeated ``ppo.samples_per_prompt`` times in a row (a group); with
    an environment, an episode for each (reset: its first prompt and state). Every rank reads the same prompts and
    keeps its own 1/N."""
    size, copies, states = run.config.ppo.rollout_batch_size, run.config.ppo.samples_per_prompt, None
    if run.episodes is None:
        prompts = run.dist.shard(run.prompts.take_prompts(size, run.tokenizer, run.config.data))
        encoded = [prompt for prompt in prompts for _ in range(copies)]
    else:
        records = run.dist.shard(run.prompts.take(size))
        encoded, states = run.episodes.reset([record for record in records for _ in range(copies)])
    input_ids, attention_mask = left_pad([p.ids for p in encoded], run.tokenizer.pad_token_id)
    return PromptBatch(input_ids.to(run.device), attention_mask.to(run.device), encoded, states)


@dataclass
class ComposerScorer:
    """The engine's scorer: the composer's weighted total for each sample made from the rollout's responses."""

    composer: Composer
    tokenizer: Any
    gather: Optional[Callable[[list], list]] = None  # data parallel: every rank's reward values

    @property
    def reads_reference_hidden(self) -> bool:
        """Whether a reward of the composer scores from the frozen reference's hidden states."""
        return self.composer.reads_reference_hidden

    def start(self, responses: Responses, records):
        """Decode one chunk (or an environment's finished episodes) into samples and start its background rewards
        (the composer's workers)."""
        if isinstance(responses, Episodes):
            samples = responses.samples
        else:
            samples = make_samples(records, responses.tokens, responses.mask, responses.stopped_by_eos,
                                   self.tokenizer)
        return records, self.composer.start(samples)

    def finish(self, handles, reference_hidden=None):
        composition = self.composer.finish([scoring for _, scoring in handles], reference_hidden, self.gather)
        stats = {**composition.stats, **long_prompt_stats([record for records, _ in handles for record in records])}
        return torch.tensor(composition.totals, dtype=torch.float32), stats


def make_scorer(composer: Composer, tokenizer, dist: Distributed = SINGLE_PROCESS) -> ComposerScorer:
    return ComposerScorer(composer, tokenizer, dist.gather_values if dist.active else None)


# ---- checkpoints ---------------------------------------------------------------------------------------
def save_policy(run: Run, directory: Path, full: Optional[dict] = None) -> None:
    """The policy with save_pretrained (transformers alone loads it), its tokenizer, and the critic. ``full``: the
    weights gathered from FSDP's shards (:func:`gathered_training_state`)."""
    critic = full["value_head"].values() if full and full["value_head"] else run.model.critic_parameters()
    if not all(torch.isfinite(p).all() for p in critic):
        raise TrainingError("refusing to save non-finite critic weights; the run diverged")
    save_model(run.model.policy, run.tokenizer, directory, full and full["policy"])
    run.model.save_critic(directory, full and full["value_head"])


def gathered_state(run: Run, with_optimizer: bool = True) -> Optional[dict]:
    """FSDP: the full weights (and optimizer state) on rank 0 (a collective: every rank calls it); else None."""
    if not run.dist.sharded:
        return None
    with peer_failures(run.dist, "gathering the shards to rank 0"):
        return gathered_training_state(run.model, run.engine.optimizer if with_optimizer else None)


def save_final(run: Run, directory: Path, full: Optional[dict] = None) -> None:
    """The final output: the policy as checkpoints hold it and, for LoRA with save_merged, the merged model."""
    save_policy(run, directory, full)
    lora = run.config.model.lora
    if lora is not None and lora.save_merged:
        save_model(merged_copy(run.model.policy), run.tokenizer, directory / MERGED_DIR)


def write_final(run: Run, directory: Path) -> None:
    """Rank 0 writes the final model (every rank calls it: FSDP gathers the shards first)."""
    full = gathered_state(run, with_optimizer=False)
    if run.dist.is_primary:
        save_final(run, directory, full)


def save_checkpoint(run: Run, run_dir: Path, metrics_lines: int, generators: Optional[dict] = None,
                    full: Optional[dict] = None) -> Path:
    """``generators``: every rank's generator state (:meth:`Distributed.generator_states`); ``full``: FSDP's
    gathered weights and optimizer state (:func:`gathered_state`); rank 0 writes."""
    def write(tmp: Path) -> None:
        save_policy(run, tmp / "policy", full)
        engine_state = run.engine.state_dict()
        optimizer = full["optimizer"] if full else engine_state["optimizer"]
        ckpt.save_torch_state(tmp / "optimizer.pt", {"optimizer": optimizer,
                                                      "scheduler": engine_state["scheduler"],
                                                      "grad_scaler": engine_state["grad_scaler"]})
        ckpt.save_tensors(tmp / "rng.safetensors", generators or {"generator": engine_state["generator"]})
        ckpt.write_json(tmp / ckpt.STATE_FILE, {
            "update": run.update,
            "metrics_lines": metrics_lines,
            "data_position": run.prompts.position,
            "kl_controller": engine_state["kl_controller"],
            "nonfinite_in_a_row": engine_state["nonfinite_in_a_row"],
            "composer": run.composer.state_dict(),
            "config": run.config.model_dump(mode="json"),
        })

    return ckpt.save_checkpoint(run_dir, run.update, run.config.train.keep_checkpoints, write)


def load_checkpoint(run: Run, path: Path) -> int:
    """Restore ``run`` from a checkpoint; returns how many metrics lines belong to it."""
    from transformers import AutoModelForCausalLM

    state = ckpt.read_json(path / ckpt.STATE_FILE)
    ckpt.check_resumable(state["config"], run.config.model_dump(mode="json"), path, RESUMABLE_CHANGES)
    if is_adapter_model(run.model.policy):  # LoRA: the checkpoint holds the adapters, the base is model.path
        load_adapter_weights(run.model.policy, path / "policy")
    else:
        saved = AutoModelForCausalLM.from_pretrained(path / "policy", dtype=torch.float32)
        load_weights(run.model.policy, saved.state_dict())  # FSDP: into this rank's shards
    run.model.load_critic(path / "policy")
    torch_state = ckpt.load_torch_state(path / "optimizer.pt")
    if run.dist.sharded:  # the checkpoint holds the full optimizer state: this rank's shards of it
        torch_state["optimizer"] = load_optimizer_state(run.model, run.engine.optimizer, torch_state["optimizer"])
    run.engine.load_state_dict({
        "optimizer": torch_state["optimizer"],
        "scheduler": torch_state["scheduler"],
        "grad_scaler": torch_state.get("grad_scaler", {}),
        "kl_controller": state["kl_controller"],
        "generator": run.dist.own_generator_state(ckpt.load_tensors(path / "rng.safetensors"), path),
        "nonfinite_in_a_row": state["nonfinite_in_a_row"],
    })
    run.composer.load_state_dict(state["composer"])
    run.prompts.seek(state["data_position"])
    run.update = int(state["update"])
    return int(state["metrics_lines"])


# ---- the loop ------------------------------------------------------------------------------------------
@contextmanager
def closing_episodes(run: Run) -> Iterator[None]:
    """The environment's worker process stops with the run."""
    try:
        yield
    finally:
        if run.episodes is not None:
            run.episodes.close()


class UpdateLine:
    """PPO logs every update: the engine's statistics, the update's wall time and its throughput, and what the
    reward-hacking watch adds (:mod:`ppo_core.rewards.hacking`)."""

    def __init__(self, watch: Optional[HackingWatch] = None):
        self.watch = watch

    def add(self, stats: dict[str, float], elapsed: float) -> None:
        self.stats, self.elapsed = stats, elapsed

    def line(self, done: int) -> dict:
        line = {"update": done, **self.stats, "time/update_s": self.elapsed,
                "tokens_per_s": self.stats["response_tokens"] / self.elapsed}
        return self.watch(line) if self.watch else line


def run_hooks(plugins: PluginSet, config: RunConfig, context: RunContext, command: str, run_dir: Path, total: int,
              callbacks: Sequence = (), source: str = "config") -> RunHooks:
    """The run hooks of the loaded plugins, the ``callbacks`` and the configured loggers (``train.loggers``)."""
    attach_callbacks(plugins.manager, plugins.registry, config.train.logger_configs(), callbacks, context, source)
    return RunHooks(RunInfo(command, run_dir, config, total), plugins.manager.hook)


def held_out_evaluation(run: Run):
    """``train.eval_every``: the eval split scored greedy and sampled with the run's rewards (``eval/*``)."""
    from .evaluate import evaluate_during_training

    records = take_records(run.dataset, "eval", run.config.train.eval_samples)
    if not records:
        raise ConfigError(f"train.eval_every: the eval split of {dataset_label(run.config)} has no records")
    return lambda: evaluate_during_training(run.model.policy, run.tokenizer, records, run.config, run.composer,
                                            run.device, run.episodes)


def train(config: RunConfig, resume: bool = False, overwrite: bool = False, extra_plugins: Iterable = (),
          source: str = "config", progress_stream=None, callbacks: Sequence = ()) -> Path:
    """Run PPO as configured; returns the directory of the final model. ``callbacks``: objects implementing
    the run hooks (ppo_core.plugin.hookspecs)."""
    if not config.rewards and config.environment is None:
        raise ConfigError(f"{source}: rewards: PPO needs at least one reward or an environment's turn rewards "
                          f"(only `sft` and `eval` run without)")
    config = fit_to_context(config, config.model.path, source)
    check_fsdp(config, source)
    dist = join_process_group(config.model.device, config.train.parallel)  # torchrun's ranks; rank 0 alone writes
    with rank_run_dir(dist, lambda: claim_run_dir(config.train.output_dir, resume, overwrite),
                      config.train.output_dir) as run_dir:
        ckpt.check_resume_progress(run_dir.work, resume, config.train.updates, "update", "train.updates")
        run = build_run(config, extra_plugins, source, dist)  # the old run stays until the new one has saved
        with run.composer, closing_episodes(run):  # reward and environment workers stop with the run
            hooks = run_hooks(run.plugins, config, run.context, "train", run_dir.work, config.train.updates,
                              callbacks, source) if dist.is_primary else None  # an unknown logger fails first
            log = open_rank_run_dir(dist, open_run_dir, run_dir, config, resume,
                                    lambda path: load_checkpoint(run, path))
            progress = Progress(config.train.updates, config.train.progress if dist.is_primary else "none",
                                **({"stream": progress_stream} if progress_stream else {}))
            scorer = make_scorer(run.composer, run.tokenizer, dist)
            watch = HackingWatch.for_rewards({reward.name: reward.weight for reward in config.rewards})
            for line in read_metrics(log.path):  # a resumed run's earlier updates
                watch(line, quiet=True)

            def checkpoint(directory: Path, update: int, metrics_lines: int) -> Path:
                run.update = update
                generators = dist.generator_states(run.engine.generator.get_state()) if dist.active else None
                full = gathered_state(run)  # FSDP: every rank sends its shards to rank 0
                return save_checkpoint(run, directory, metrics_lines, generators, full) if dist.is_primary \
                    else directory

            loop = RunLoop(
                total=config.train.updates,
                step=sharded_step(dist, lambda: run.engine.step(next_prompt_batch(run), scorer)),
                window=UpdateLine(watch if dist.is_primary else None),  # rank 0 alone warns
                log=log, progress=progress,  # the engine guards its optimizer steps itself
                save_checkpoint=checkpoint, save_every=config.train.save_every,
                directory=run_dir, write_final=lambda tmp: write_final(run, tmp),
                hooks=hooks,
                eval_every=config.train.eval_every,
                evaluate=held_out_evaluation(run) if config.train.eval_every and dist.is_primary else dict,
                agree=dist.any,
            )
            final = loop.run(start=run.update)
            dist.barrier("waiting for rank 0's final save")
            return final
