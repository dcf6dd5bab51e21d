"""The run config's sections: one pydantic model per section, validated strictly (unknown keys rejected)."""

from __future__ import annotations

import typing
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

# Bounds that keep a typo from hanging the run or asking for an absurd allocation (the error names the bound).
MAX_BATCH = 65_536  # samples, prompts or records in one batch
MAX_TOKENS = 1_048_576  # tokens of one prompt or response (the model's context is checked before a run too)
MAX_WIDTH = 65_536  # units in a head's hidden layer
MAX_THREADS = 1024
MAX_SEED = 2**63 - 1  # torch.manual_seed and torch.Generator take 64-bit seeds


def _takes_a_number_not_a_bool(annotation: Any) -> bool:
    """``int``, ``float``, ``Optional[int]``, ``Union[Literal["skip"], float]``...: a field where YAML's
    ``true`` is a mistake (pydantic would read it as 1)."""
    if annotation is bool:
        return False
    if annotation in (int, float):
        return True
    return any(_takes_a_number_not_a_bool(arg) for arg in typing.get_args(annotation))


class Section(BaseModel):
    """A config section: unknown keys, non-finite numbers and booleans for numbers are rejected."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and _takes_a_number_not_a_bool(cls.model_fields[info.field_name].annotation):
            raise ValueError("expected a number, not a boolean")
        return value


def _must_divide(part: Optional[int], name: str, whole_name: str, info: ValidationInfo) -> Optional[int]:
    """Batch sizes nest: ``part`` (the field ``name``) must divide the already-validated field ``whole_name``."""
    whole = info.data.get(whole_name)
    if part is not None and whole is not None and whole % part:
        raise ValueError(f"{name} ({part}) must divide {whole_name} ({whole})")
    return part


def _named_once(items: list, what: str) -> list:
    """``items`` (each with a ``name``) if no name is listed twice; else a ValueError naming the repeated ones."""
    names = [item.name for item in items]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"{what}(s) listed twice: {', '.join(duplicates)}")
    return items


class ModelConfig(Section):
    path: str = Field(description="Policy checkpoint: a local directory or a hub id (any transformers causal LM).")
    tokenizer: Optional[str] = Field(None, description="Tokenizer path or hub id; defaults to `path`.")
    critic: Literal["shared", "separate"] = Field(
        "shared", description="`shared`: the value head sits on the policy's backbone (one forward gives logits "
        "and values). `separate`: the critic has its own backbone.")
    critic_path: Optional[str] = Field(None, description="Checkpoint the separate critic's backbone starts from; "
                                       "defaults to the policy's `path`.")
    value_head_hidden: Optional[int] = Field(None, gt=0, le=MAX_WIDTH, description="Hidden width of the value "
                                             "head's MLP; defaults to the backbone's hidden size.")
    trust_remote_code: bool = Field(False, description="Allow checkpoints that ship their own modelling code.")
    device: str = Field("auto", description="`auto` (CUDA when available, else CPU), `cpu`, `cuda`, `cuda:1`...")

    @field_validator("critic_path")
    @classmethod
    def _critic_path_needs_a_separate_critic(cls, critic_path: Optional[str], info: ValidationInfo) -> Optional[str]:
        if critic_path is not None and info.data.get("critic") == "shared":
            raise ValueError("applies only with `critic: separate`; the shared critic sits on the policy's backbone")
        return critic_path


class DataConfig(Section):
    dataset: str = Field(description="Name of a registered dataset (see `ppo-core plugins`).")
    options: dict[str, Any] = Field(default_factory=dict, description="The dataset's own options.")
    shuffle: bool = Field(True, description="Shuffle the prompts each pass, seeded by `train.seed`.")
    max_prompt_tokens: int = Field(256, gt=0, le=MAX_TOKENS, description="Longest prompt in tokens. Prompt + "
                                   "response must fit the model's context (read from its config.json): unset, it "
                                   "shrinks to the context minus `generation.max_new_tokens` when 256 would not fit.")
    long_prompts: Literal["truncate", "reject"] = Field(
        "truncate", description="A longer prompt keeps its last tokens (`truncate`) or stops the run (`reject`).")
    chat_template: bool = Field(True, description="Apply the tokenizer's chat template when it has one.")


class RewardConfig(Section):
    name: str = Field(description="Name of a registered reward (see `ppo-core plugins`).")
    weight: float = Field(1.0, description="Weight w_i in total = sum_i w_i * r_i.")
    options: dict[str, Any] = Field(default_factory=dict, description="The reward's own options.")
    normalize: bool = Field(False, description="Standardise this reward with running mean/std before weighting.")
    on_abstain: Union[Literal["skip"], float] = Field(
        "skip", description="A sample the reward abstains on (None): `skip` leaves the term out of that sample's "
        "total; a number is used as the reward instead.")
    on_error: Union[Literal["raise", "skip"], float] = Field(
        "raise", description="A failing call: `raise` stops the run naming the plugin and sample; `skip` treats "
        "the batch as abstained; a number is used for every sample. Events are counted in metrics.")
    timeout_s: Optional[float] = Field(60.0, gt=0, description="Per-batch time limit for this reward, in seconds; "
                                       "a late call is a fault (its worker process is killed and restarted). "
                                       "`null`: no limit.")
    isolation: Literal["process", "none"] = Field(
        "process", description="`process`: the reward runs in its own worker process, fed copies of the samples: "
        "a hang, crash or exit there is a fault of this reward, never the run's. `none`: in the main process "
        "(no pickling; a crash or `os._exit` there ends the run).")


class KLConfig(Section):
    coef: float = Field(0.05, ge=0, description="Initial KL coefficient beta.")
    estimator: Literal["k1", "k2", "k3"] = Field("k1", description="KL estimator: k1 log p/q, k2 1/2 (log p/q)^2, "
                                                 "k3 (q/p - 1) - log q/p.")
    placement: Literal["reward", "loss"] = Field("reward", description="Subtract beta*KL from the per-token reward, "
                                                 "or add beta*KL to the loss.")
    target: Optional[float] = Field(None, gt=0, description="Target KL for the adaptive controller; unset: fixed beta.")
    horizon: int = Field(10000, gt=0, description="Horizon of the adaptive controller (in samples).")


class PPOConfig(Section):
    rollout_batch_size: int = Field(64, gt=0, le=MAX_BATCH, description="Prompts sampled per update.")
    minibatch_size: int = Field(16, gt=0, le=MAX_BATCH, validate_default=True,
                                description="Samples per optimizer step.")
    micro_batch_size: Optional[int] = Field(None, gt=0, le=MAX_BATCH, description="Samples per forward/backward; "
                                            "gradients accumulate up to `minibatch_size`. Defaults to "
                                            "`minibatch_size`.")
    epochs: int = Field(4, gt=0, description="Passes over each rollout buffer, freshly shuffled each time.")
    clip_range: float = Field(0.2, gt=0, description="Policy ratio clip epsilon.")
    clip_range_value: Optional[float] = Field(0.2, gt=0, description="Value clip; unset for the unclipped loss.")
    vf_coef: float = Field(0.1, ge=0, description="c1: weight of the value loss.")
    entropy_coef: float = Field(0.0, ge=0, description="c2: weight of the entropy bonus.")
    gamma: float = Field(1.0, ge=0, le=1, description="Discount.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    kl: KLConfig = Field(default_factory=KLConfig)
    whiten_advantages: bool = Field(True, description="Whiten advantages over the whole rollout batch.")
    whiten_rewards: bool = Field(False, description="Whiten the per-token rewards before GAE.")
    reward_clip: Optional[float] = Field(None, gt=0, description="Clip sequence scores to [-c, c].")
    missing_eos_penalty: Optional[float] = Field(None, ge=0, description="Subtracted from the score of "
                                                 "responses cut off by the length limit.")

    # field validators (not a model validator) so that the error names the field: ppo.minibatch_size: ...
    @field_validator("minibatch_size")
    @classmethod
    def _minibatch_divides_rollout(cls, minibatch: int, info: ValidationInfo) -> int:
        return _must_divide(minibatch, "minibatch_size", "rollout_batch_size", info)

    @field_validator("micro_batch_size")
    @classmethod
    def _micro_divides_minibatch(cls, micro: Optional[int], info: ValidationInfo) -> Optional[int]:
        return _must_divide(micro, "micro_batch_size", "minibatch_size", info)


class GenerationConfig(Section):
    max_new_tokens: int = Field(32, gt=0, le=MAX_TOKENS, description="Longest response in tokens.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (log-probs use the same one).")
    top_k: int = Field(0, ge=0, description="Keep the k most likely tokens; 0 keeps all.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass; 1 keeps all.")
    batch_size: Optional[int] = Field(None, gt=0, le=MAX_BATCH, description="Prompts per generation call; "
                                      "defaults to the whole rollout batch.")


class OptimConfig(Section):
    lr: float = Field(1e-5, gt=0, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW's decay rates (beta1, beta2), each "
                                       "in [0, 1).")
    eps: float = Field(1e-8, gt=0)
    max_grad_norm: Optional[float] = Field(1.0, gt=0, description="Clip the global gradient norm; unset: no clip.")
    warmup_steps: int = Field(0, ge=0, description="Optimizer steps of linear warm-up.")
    schedule: Literal["constant", "linear", "cosine"] = Field("linear", description="Decay after warm-up, to 0 "
                                                              "at the last optimizer step.")

    @field_validator("betas")
    @classmethod
    def _betas_below_one(cls, betas: tuple[float, float]) -> tuple[float, float]:
        outside = [f"beta{i} = {beta}" for i, beta in enumerate(betas, start=1) if not 0 <= beta < 1]
        if outside:
            raise ValueError(f"each beta must be in [0, 1): {', '.join(outside)}")
        return betas


class LoggerConfig(Section):
    name: str = Field(description="Name of a registered logger: `tensorboard`, `wandb`, `mlflow` (the "
                      "ppo-core-loggers plugin) or a plugin's own.")
    options: dict[str, Any] = Field(default_factory=dict, description="The logger's own options.")


class TrainConfig(Section):
    updates: int = Field(100, gt=0, description="PPO updates (rollout + optimisation) to run.")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seeds sampling, shuffling and initialisation.")
    output_dir: str = Field("runs/ppo", description="Run directory: config, metrics.jsonl, checkpoints, final model.")
    save_every: int = Field(0, ge=0, description="Checkpoint every N updates (0: only the final model).")
    keep_checkpoints: int = Field(2, gt=0, description="How many of the newest checkpoints to keep.")
    threads: Optional[int] = Field(None, gt=0, le=MAX_THREADS, description="torch CPU threads; unset leaves "
                                   "torch's default.")
    tensorboard: bool = Field(False, description="Old spelling of `loggers: [tensorboard]` (still accepted).")
    loggers: list[LoggerConfig] = Field(default_factory=list, description="Where metrics go besides "
                                        "metrics.jsonl: a name (`tensorboard`) or `{name, options}` each.")
    eval_every: int = Field(0, ge=0, description="Every N updates and after the last, score the eval split "
                            "(greedy and sampled, the run's rewards) and log `eval/*`; 0: never.")
    eval_samples: Optional[int] = Field(None, gt=0, description="Eval records `eval_every` uses (the first N); "
                                        "unset: the whole eval split.")
    max_nonfinite_steps: int = Field(3, gt=0, description="Stop after this many non-finite steps in a row.")
    progress: Literal["auto", "bar", "lines", "none"] = Field("auto", description="`auto`: a bar on a terminal, "
                                                              "plain lines otherwise.")

    @field_validator("loggers", mode="before")
    @classmethod
    def _logger_names_alone(cls, loggers: Any) -> Any:
        """``[tensorboard, {name: wandb, options: {...}}]``: a bare name stands for ``{name: ...}``."""
        if isinstance(loggers, list):
            return [{"name": item} if isinstance(item, str) else item for item in loggers]
        return loggers

    @field_validator("loggers")
    @classmethod
    def _unique_logger_names(cls, loggers: list[LoggerConfig]) -> list[LoggerConfig]:
        return _named_once(loggers, "logger")

    def logger_configs(self) -> list[LoggerConfig]:
        """``loggers``, with ``tensorboard`` added when the old ``tensorboard: true`` asks for it."""
        if self.tensorboard and "tensorboard" not in {logger.name for logger in self.loggers}:
            return [*self.loggers, LoggerConfig(name="tensorboard")]
        return list(self.loggers)


class PluginsConfig(Section):
    allow: Optional[list[str]] = Field(None, description="Load only these plugins (entry-point or distribution "
                                       "names); unset loads all. PPO_CORE_PLUGINS narrows it further.")
    block: list[str] = Field(default_factory=list, description="Never load these. PPO_CORE_BLOCK_PLUGINS adds more.")


class SFTConfig(Section):
    """`ppo-core sft`: supervised fine-tuning on the records' solutions (optim, data, model, train reused)."""

    steps: Optional[int] = Field(None, gt=0, description="Optimizer steps; unset: `epochs` passes over the "
                                 "train split.")
    epochs: float = Field(1.0, gt=0, description="Passes over the train split when `steps` is unset.")
    batch_size: int = Field(16, gt=0, le=MAX_BATCH, description="Records per optimizer step.")
    micro_batch_size: Optional[int] = Field(None, gt=0, le=MAX_BATCH, description="Records per forward/backward; "
                                            "gradients accumulate up to `batch_size`. Defaults to `batch_size`.")
    lr: Optional[float] = Field(None, gt=0, description="Peak learning rate; defaults to `optim.lr` (the rest "
                                "of `optim` -- warm-up, schedule, clipping -- applies as in PPO).")
    max_response_tokens: Optional[int] = Field(None, gt=0, le=MAX_TOKENS, description="Longest target (solution "
                                               "+ eos) in tokens, longer ones are cut; defaults to "
                                               "`generation.max_new_tokens`.")
    dropout: bool = Field(False, description="Keep the checkpoint's dropout (off by default, as in PPO).")
    log_every: int = Field(1, gt=0, description="Write a metrics line every N steps (the loss averaged over them).")
    eval_every: int = Field(0, ge=0, description="Every N steps and after the last, log the eval split's loss "
                            "and greedy exact match and reward means; 0: never.")
    eval_samples: Optional[int] = Field(None, gt=0, description="Eval records `eval_every` uses (the first N); "
                                        "unset: the whole eval split.")
    save_every: int = Field(0, ge=0, description="Checkpoint every N steps (0: only the final model).")
    output_dir: Optional[str] = Field(None, description="Run directory; defaults to `train.output_dir`.")

    @field_validator("micro_batch_size")
    @classmethod
    def _micro_divides_batch(cls, micro: Optional[int], info: ValidationInfo) -> Optional[int]:
        return _must_divide(micro, "micro_batch_size", "batch_size", info)


class RunConfig(Section):
    model: ModelConfig
    data: DataConfig
    # may be empty for `ppo-core sft`/`eval`; `ppo-core train` requires at least one (ppo_core.commands.train.train)
    rewards: list[RewardConfig] = Field(default_factory=list)
    ppo: PPOConfig = Field(default_factory=PPOConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    plugins: PluginsConfig = Field(default_factory=PluginsConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)

    @field_validator("rewards")
    @classmethod
    def _unique_reward_names(cls, rewards: list[RewardConfig]) -> list[RewardConfig]:
        return _named_once(rewards, "reward")
