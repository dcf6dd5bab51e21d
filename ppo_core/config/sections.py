"""The run config's sections: one pydantic model per section, validated strictly (unknown keys rejected)."""

from __future__ import annotations

from typing import Any, Literal, NamedTuple, Optional, Union

from pydantic import Field, ValidationInfo, field_validator, model_validator

from .base import (  # noqa: F401  (re-exported: the bounds are part of this module's surface)
    MAX_BATCH,
    MAX_SEED,
    MAX_THREADS,
    MAX_TOKENS,
    MAX_TURNS,
    MAX_WIDTH,
    Section,
    _must_divide,
    _named_once,
)
from .plugin_sections import (
    EnvironmentConfig,
    LoggerConfig,
    PluginsConfig,
    RewardConfig,
)
from .sft_section import SFTConfig, check_stop_can_fire, parse_stop_at, stop_condition_met  # noqa: F401  (re-exported)


class EstimatorDefaults(NamedTuple):
    """What `ppo.advantage` implies for the options left unset (docs/design.md, "Advantage estimators")."""

    critic: str
    kl_estimator: str
    kl_placement: str
    loss_aggregation: str
    whiten_advantages: bool


ESTIMATOR_DEFAULTS = {  # each as its paper does it (docs/design.md has the table with the papers)
    "gae": EstimatorDefaults("shared", "k1", "reward", "token_mean", True),  # Ziegler et al. 2019
    "grpo": EstimatorDefaults("none", "k3", "loss", "sequence_mean", False),  # Shao et al. 2024
    "dr_grpo": EstimatorDefaults("none", "k3", "loss", "token_sum_constant", False),  # Liu et al. 2025
    "rloo": EstimatorDefaults("none", "k1", "reward", "token_mean", False),  # Ahmadian et al. 2024
    "reinforce_pp": EstimatorDefaults("none", "k1", "reward", "token_mean", True),  # Hu 2025
}
GROUP_ESTIMATORS = ("grpo", "dr_grpo", "rloo")  # compare the samples of one prompt
DEFAULT_VF_COEF = 0.1


class LoRAConfig(Section):
    """Low-rank adapters (peft; `pip install 'ppo-core[lora]'`): the policy's weights stay frozen, the adapters and
    the value head train, and the reference is the same model with its adapters off (no second copy)."""

    r: int = Field(8, gt=0, le=MAX_WIDTH, description="Rank of each adapter.")
    alpha: float = Field(16.0, gt=0, description="Scale numerator: an adapter's update is scaled by alpha / r.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapters' input. PPO needs 0: every "
                           "dropout is off in a PPO run, so that the first minibatch's ratio is exactly 1.")
    target_modules: Optional[Union[list[str], Literal["all-linear"]]] = Field(
        None, description="Names (or name suffixes) of the modules that get adapters, or `all-linear`; unset: "
        "peft's default for the architecture (e.g. GPT-2's `c_attn`, Llama's `q_proj`/`v_proj`).")
    save_merged: bool = Field(False, description="Also write `final/merged`: a full model with the adapters folded "
                              "in (transformers loads it without peft).")

    @field_validator("dropout", "target_modules")
    @classmethod
    def _usable_in_ppo(cls, value: Any, info: ValidationInfo) -> Any:
        if info.field_name == "dropout" and value:
            raise ValueError("must be 0: a PPO run turns every dropout off (its first minibatch's ratio must be "
                             "exactly 1)")
        if value == []:  # target_modules
            raise ValueError("names no module: list one or more, or all-linear; unset: peft's default")
        return value


class ModelConfig(Section):
    path: str = Field(description="Policy checkpoint: a local directory or a hub id (any transformers causal LM).")
    tokenizer: Optional[str] = Field(None, description="Tokenizer path or hub id; defaults to `path`.")
    critic: Literal["shared", "separate", "none"] = Field(
        "shared", description="`shared`: the value head sits on the policy's backbone (one forward gives logits "
        "and values). `separate`: the critic has its own backbone. `none`: no value head (the critic-free "
        "`ppo.advantage` estimators; unset, it is `none` for those and `shared` for `gae`).")
    critic_path: Optional[str] = Field(None, description="Checkpoint the separate critic's backbone starts from; "
                                       "defaults to the policy's `path`.")
    value_head_hidden: Optional[int] = Field(None, gt=0, le=MAX_WIDTH, description="Hidden width of the value "
                                             "head's MLP; defaults to the backbone's hidden size.")
    trust_remote_code: bool = Field(False, description="Allow checkpoints that ship their own modelling code.")
    device: str = Field("auto", description="`auto` (CUDA when available, else CPU), `cpu`, `cuda`, `cuda:1`...")
    lora: Optional[LoRAConfig] = Field(None, description="Train LoRA adapters instead of every weight; unset: full "
                                       "fine-tuning.")
    gradient_checkpointing: bool = Field(False, description="Keep only each layer's input for the backward pass "
                                         "and recompute the rest (transformers' gradient checkpointing, "
                                         "non-reentrant): less memory in training, one more forward per "
                                         "backward. Sampling still uses the KV cache.")

    @field_validator("lora")
    @classmethod
    def _lora_with_a_shared_critic(cls, lora: Optional[LoRAConfig], info: ValidationInfo) -> Optional[LoRAConfig]:
        if lora is not None and info.data.get("critic") == "separate":
            raise ValueError("LoRA runs use `critic: shared` (the value head on the policy's backbone, whose "
                             "adapters train with it); a separate critic would be a full second model to train")
        return lora

    @field_validator("critic_path")
    @classmethod
    def _critic_path_needs_a_separate_critic(cls, critic_path: Optional[str], info: ValidationInfo) -> Optional[str]:
        if critic_path is not None and info.data.get("critic") == "shared":
            raise ValueError("applies only with `critic: separate`; the shared critic sits on the policy's backbone")
        if critic_path is not None and info.data.get("critic") == "none":
            raise ValueError("applies only with `critic: separate`; this run has no critic (`critic: none`)")
        return critic_path

    @field_validator("value_head_hidden")
    @classmethod
    def _value_head_needs_a_critic(cls, hidden: Optional[int], info: ValidationInfo) -> Optional[int]:
        if hidden is not None and info.data.get("critic") == "none":
            raise ValueError("there is no value head with `critic: none`; remove it")
        return hidden


class DataConfig(Section):
    dataset: Optional[str] = Field(description="Name of a registered dataset (see `ppo-core plugins`). With an "
                                   "`environment`, it may be left out: the environment's own episodes are used.")
    options: dict[str, Any] = Field(default_factory=dict, description="The dataset's own options.")
    shuffle: bool = Field(True, description="Shuffle the prompts each pass, seeded by `train.seed`.")
    max_prompt_tokens: int = Field(256, gt=0, le=MAX_TOKENS, description="Longest prompt in tokens. Prompt + "
                                   "response must fit the model's context (read from its config.json): unset, it "
                                   "shrinks to the context minus `generation.max_new_tokens` when 256 would not fit.")
    long_prompts: Literal["truncate", "error", "skip"] = Field(
        "truncate", description="A longer prompt is cut (`truncate`: the system turn kept, the conversation after it "
        "cut from its start), stops the run (`error`; `reject` is read as `error`) or is left out (`skip`); truncated "
        "and skipped prompts are counted (`data/truncated_prompts`, `data/skipped_prompts`) and announced once.")
    chat_template: bool = Field(True, description="Apply the tokenizer's chat template when it has one.")

    @field_validator("long_prompts", mode="before")
    @classmethod
    def _reject_is_error(cls, value: Any) -> Any:
        return "error" if value == "reject" else value


class KLConfig(Section):
    coef: float = Field(0.05, ge=0, description="Initial KL coefficient beta.")
    estimator: Optional[Literal["k1", "k2", "k3"]] = Field(
        None, description="KL estimator: k1 log p/q, k2 1/2 (log p/q)^2, k3 (q/p - 1) - log q/p. Unset: the "
        "estimator's paper: k3 for `grpo` and `dr_grpo`, k1 for the others.")
    placement: Optional[Literal["reward", "loss"]] = Field(
        None, description="Subtract beta*KL from the per-token reward, or add beta*KL to the loss. Unset: the "
        "estimator's paper: `loss` for `grpo` and `dr_grpo`, `reward` for the others.")
    target: Optional[float] = Field(None, gt=0, description="Target KL for the adaptive controller; unset: fixed beta.")
    horizon: int = Field(10000, gt=0, description="Horizon of the adaptive controller (in samples).")


class PPOConfig(Section):
    advantage: Literal["gae", "grpo", "dr_grpo", "rloo", "reinforce_pp"] = Field(
        "gae", description="Advantage estimator. `gae`: GAE over a critic's values. Critic-free: `grpo` (reward "
        "minus its group's mean, over the group's std), `dr_grpo` (without the std), `rloo` (minus the mean of "
        "the other samples of its prompt), `reinforce_pp` (discounted returns of the per-token rewards, "
        "whitened over the batch). The KL options, `loss_aggregation` and `whiten_advantages` default to what "
        "the estimator's paper does (docs/design.md).")
    rollout_batch_size: int = Field(64, gt=0, le=MAX_BATCH, description="Prompts sampled per update (the buffer "
                                    "holds `rollout_batch_size` x `samples_per_prompt` samples).")
    samples_per_prompt: int = Field(1, gt=0, le=MAX_BATCH, validate_default=True, description="Responses sampled for each prompt (a "
                                    "group, kept together in the buffer); `grpo`, `dr_grpo` and `rloo` need 2 or "
                                    "more.")
    minibatch_size: int = Field(16, gt=0, le=MAX_BATCH, validate_default=True,
                                description="Samples per optimizer step; divides `rollout_batch_size` x "
                                "`samples_per_prompt` (a minibatch may split a group).")
    micro_batch_size: Optional[int] = Field(None, gt=0, le=MAX_BATCH, description="Samples per forward/backward; "
                                            "gradients accumulate up to `minibatch_size`. Defaults to "
                                            "`minibatch_size`.")
    epochs: int = Field(4, gt=0, description="Passes over each rollout buffer, freshly shuffled each time.")
    clip_range: float = Field(0.2, gt=0, description="Policy ratio clip epsilon.")
    clip_range_value: Optional[float] = Field(0.2, gt=0, description="Value clip; unset for the unclipped loss.")
    vf_coef: Optional[float] = Field(None, ge=0, description="c1: weight of the value loss; unset: 0.1. An error "
                                     "with a critic-free `advantage` (no value loss).")
    entropy_coef: float = Field(0.0, ge=0, description="c2: weight of the entropy bonus.")
    gamma: float = Field(1.0, ge=0, le=1, description="Discount.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    kl: KLConfig = Field(default_factory=KLConfig)
    whiten_advantages: Optional[bool] = Field(None, description="Whiten advantages over the whole rollout batch. "
                                              "Unset: on for `gae` and `reinforce_pp`, off for the group "
                                              "estimators.")
    whiten_rewards: bool = Field(False, description="Whiten the per-token rewards before GAE.")
    reward_clip: Optional[float] = Field(None, gt=0, description="Clip sequence scores to [-c, c].")
    missing_eos_penalty: Optional[float] = Field(None, ge=0, description="Subtracted from the score of "
                                                 "responses cut off by the length limit.")
    loss_aggregation: Optional[Literal["token_mean", "sequence_mean", "token_sum_constant"]] = Field(
        None, description="How per-token loss terms become one loss: `token_mean` over the minibatch's tokens, "
        "`sequence_mean` (each response's token mean, averaged), `token_sum_constant` (token sums over "
        "`generation.max_new_tokens`, averaged over responses: Dr. GRPO). Unset: `sequence_mean` for `grpo`, "
        "`token_sum_constant` for `dr_grpo`, `token_mean` for the others.")

    # field validators (not a model validator) so that the error names the field: ppo.minibatch_size: ...
    @field_validator("samples_per_prompt")
    @classmethod
    def _groups_for_group_estimators(cls, samples: int, info: ValidationInfo) -> int:
        advantage = info.data.get("advantage")
        if samples < 2 and advantage in GROUP_ESTIMATORS:
            raise ValueError(f"`advantage: {advantage}` compares the samples of one prompt: with 1 sample every "
                             f"advantage is 0; set 2 or more")
        return samples

    @field_validator("vf_coef")
    @classmethod
    def _value_loss_needs_a_critic(cls, vf_coef: Optional[float], info: ValidationInfo) -> Optional[float]:
        advantage = info.data.get("advantage")
        if vf_coef is not None and advantage not in (None, "gae"):
            raise ValueError(f"there is no value loss with the critic-free `advantage: {advantage}`; remove it")
        return vf_coef

    @field_validator("minibatch_size")
    @classmethod
    def _minibatch_divides_rollout(cls, minibatch: int, info: ValidationInfo) -> int:
        prompts, samples = info.data.get("rollout_batch_size"), info.data.get("samples_per_prompt")
        if prompts is not None and samples is not None and (prompts * samples) % minibatch:
            whole = (f"rollout_batch_size ({prompts})" if samples == 1 else
                     f"rollout_batch_size x samples_per_prompt ({prompts} x {samples} = {prompts * samples})")
            raise ValueError(f"minibatch_size ({minibatch}) must divide {whole}")
        return minibatch

    @field_validator("micro_batch_size")
    @classmethod
    def _micro_divides_minibatch(cls, micro: Optional[int], info: ValidationInfo) -> Optional[int]:
        return _must_divide(micro, "micro_batch_size", "minibatch_size", info)

    # the options left unset, as the estimator's paper has them (ESTIMATOR_DEFAULTS)
    @property
    def rollout_samples(self) -> int:
        """Samples in one rollout buffer: prompts x samples per prompt."""
        return self.rollout_batch_size * self.samples_per_prompt

    @property
    def kl_estimator(self) -> str:
        return self.kl.estimator or ESTIMATOR_DEFAULTS[self.advantage].kl_estimator

    @property
    def kl_placement(self) -> str:
        return self.kl.placement or ESTIMATOR_DEFAULTS[self.advantage].kl_placement

    @property
    def aggregation(self) -> str:
        return self.loss_aggregation or ESTIMATOR_DEFAULTS[self.advantage].loss_aggregation

    @property
    def whitens_advantages(self) -> bool:
        default = ESTIMATOR_DEFAULTS[self.advantage].whiten_advantages
        return default if self.whiten_advantages is None else self.whiten_advantages

    @property
    def value_coef(self) -> float:
        return DEFAULT_VF_COEF if self.vf_coef is None else self.vf_coef


class GenerationConfig(Section):
    max_new_tokens: int = Field(32, gt=0, le=MAX_TOKENS, description="Longest response in tokens.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (log-probs use the same one).")
    top_k: int = Field(0, ge=0, description="Keep the k most likely tokens; 0 keeps all.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass; 1 keeps all.")
    batch_size: Optional[int] = Field(None, gt=0, le=MAX_BATCH, description="Samples (rows) per generation call; "
                                      "defaults to the whole rollout batch.")
    score_while_sampling: bool = Field(True, description="Hand each generation chunk to the reward worker processes "
                                       "(rewards with `isolation: process`) as soon as it is sampled, so they score "
                                       "it while the next chunk is sampled and the log-probs are computed; false: "
                                       "every reward scores the batch after that. The numbers are the same.")


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
    parallel: Literal["ddp", "fsdp"] = Field("ddp", description="Under torchrun: `ddp` keeps a whole model on "
                                             "each rank, `fsdp` shards weights, gradients and optimizer state.")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="`bf16`/`fp16`: forward passes under "
                                                       "autocast (weights, gradients and optimizer state stay fp32; "
                                                       "log-probs for the ratio in fp32; `fp16` scales the loss). "
                                                       "For CUDA: refused on CPU unless `precision_force`.")
    precision_force: bool = Field(False, description="Run `bf16`/`fp16` autocast on the CPU anyway (its speed "
                                  "depends on the processor: bf16 is fast only with bf16 instructions, fp16 is "
                                  "emulated; the refusal gives the speed measured on the machine).")

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


class RunConfig(Section):
    model: ModelConfig
    data: DataConfig
    environment: Optional[EnvironmentConfig] = Field(None, description="multi-turn episodes; unset: one prompt, "
                                                     "one response.")
    # may be empty for `ppo-core sft`/`eval`; `ppo-core train` requires at least one (ppo_core.commands.train.train)
    rewards: list[RewardConfig] = Field(default_factory=list)
    ppo: PPOConfig = Field(default_factory=PPOConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    plugins: PluginsConfig = Field(default_factory=PluginsConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)

    @model_validator(mode="before")
    @classmethod
    def _environment_may_bring_its_episodes(cls, data: Any) -> Any:
        """With an environment, ``data`` and ``data.dataset`` may be left out (the environment's own records
        are used; the train command checks it has some); without one both stay required."""
        if isinstance(data, dict) and isinstance(data.get("environment"), dict):
            section = data.get("data", {})
            if isinstance(section, dict) and "dataset" not in section:
                data = {**data, "data": {**section, "dataset": None}}
        return data

    @model_validator(mode="before")
    @classmethod
    def _critic_follows_the_estimator(cls, data: Any) -> Any:
        """`model.critic` unset: `none` with a critic-free `ppo.advantage`, `shared` (the field's default) with gae."""
        if not isinstance(data, dict):
            return data
        model, ppo = data.get("model"), data.get("ppo")
        advantage = ppo.get("advantage") if isinstance(ppo, dict) else getattr(ppo, "advantage", None)
        if advantage not in ESTIMATOR_DEFAULTS or advantage == "gae":
            return data
        if isinstance(model, dict) and "critic" not in model:
            return {**data, "model": {**model, "critic": "none"}}
        if isinstance(model, ModelConfig) and "critic" not in model.model_fields_set:
            return {**data, "model": model.model_copy(update={"critic": "none"})}
        return data

    @model_validator(mode="after")
    def _critic_fits_the_estimator(self) -> "RunConfig":
        critic, advantage = self.model.critic, self.ppo.advantage
        if advantage == "gae" and critic == "none":
            raise ValueError("model.critic: `none` leaves `ppo.advantage: gae` without the values it needs; use "
                             "`shared` or `separate`, or a critic-free ppo.advantage (grpo, dr_grpo, rloo, "
                             "reinforce_pp)")
        if advantage != "gae" and critic != "none":
            raise ValueError(f"model.critic: `{critic}` is unused by the critic-free `ppo.advantage: {advantage}`; "
                             f"leave model.critic unset (or `none`)")
        return self

    @model_validator(mode="after")
    def _environments_keep_every_prompt(self) -> "RunConfig":
        if self.environment is not None and self.data.long_prompts == "skip":
            raise ValueError("data.long_prompts: `skip` would leave an environment's episode without its first "
                             "prompt; use `truncate` or `error` with an environment")
        return self

    @field_validator("rewards")
    @classmethod
    def _unique_reward_names(cls, rewards: list[RewardConfig]) -> list[RewardConfig]:
        return _named_once(rewards, "reward")
