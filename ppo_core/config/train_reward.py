"""The config of `ppo-core train-reward`: the backbone, the data, training and normalisation."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Union

from pydantic import Field, ValidationError, model_validator

from ..errors import ConfigError, format_validation_error
from .loading import apply_override, read_config_file
from .sections import MAX_BATCH, MAX_SEED, MAX_THREADS, MAX_TOKENS, MAX_WIDTH, PluginsConfig, Section

CORRUPTIONS = ("substitute", "delete", "shuffle", "insert", "swap")
#: on request only (the default stays CORRUPTIONS): the solution cut after its first letters (a policy that stops
#: early), and two of CORRUPTIONS applied one after the other (errors as a policy compounds them)
MORE_CORRUPTIONS = ("truncate", "double")
Corruption = Literal["substitute", "delete", "shuffle", "insert", "swap", "truncate", "double"]
#: what a preference pair's rejected response differs by (ppo_core.reward_model.pairs.pair_kind); held-out
#: accuracy is reported for each
PAIR_KINDS = ("substitution", "order", "length", "other")


class RewardTrainOptions(Section):
    """How a reward model is trained (the ``train:`` section of a train-reward config)."""

    train_backbone: bool = Field(False, description="Train the backbone too; false trains the head on the frozen "
                                 "backbone (whose features are then computed once), which lets the PPO engine "
                                 "score with zero extra forward when the policy starts from the same checkpoint.")
    backbone_layers: Optional[int] = Field(None, gt=0, description="With train_backbone: train only the top N "
                                           "transformer blocks (and the final norm after them); the embeddings "
                                           "and lower blocks stay frozen. Unset: the whole backbone.")
    added_layers: int = Field(0, ge=0, le=64, description="With train_backbone: first stack N more transformer "
                              "blocks on the backbone, each a copy of its top block with the output projections "
                              "zeroed, so that the model starts computing exactly what the checkpoint does "
                              "(block expansion) and has the depth to compare a response with its prompt.")
    epochs: int = Field(20, gt=0, description="Passes over the training data.")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate of the head.")
    backbone_lr: Optional[float] = Field(None, gt=0, description="Learning rate of the backbone (train_backbone); "
                                         "defaults to `lr`.")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: Optional[float] = Field(1.0, gt=0, description="Clip the global gradient norm; unset: no clip.")
    batch_size: int = Field(32, gt=0, le=MAX_BATCH, description="Pairs (or labelled responses) per optimizer step.")
    held_out_fraction: float = Field(0.1, ge=0, lt=1, description="Share of the data held out for evaluation.")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seeds the head's initialisation, the held-out split and "
                      "the shuffling.")
    head_hidden: Optional[int] = Field(None, gt=0, le=MAX_WIDTH, description="Width of the head's hidden layer; "
                                       "defaults to the backbone's hidden size.")
    append_eos: bool = Field(True, description="End each training response with eos, as the policy's responses "
                                "that stop at eos end (the score is read there).")
    margin: float = Field(0.0, ge=0, description="Bradley–Terry with a margin: -log σ(r_chosen − r_rejected − "
                          "margin) keeps pushing pairs apart until they differ by at least `margin`.")
    pool: Literal["last", "mean", "sum"] = Field(
        "last", description="What the head reads: `last`, the final hidden state at the last real token (eos); "
        "`mean`, the mean of the final hidden states over every real token; `sum`, each real token's state, the "
        "scores summed (a token-level reward: one wrong token can pull the sum down on its own).")



class RewardModelSection(Section):
    path: str = Field(description="Checkpoint the backbone starts from (for zero extra forward during PPO: "
                      "the policy's starting checkpoint, with train.train_backbone false).")
    tokenizer: Optional[str] = Field(None, description="Tokenizer path or hub id; defaults to `path`.")
    device: str = Field("auto", description="`auto`, `cpu`, `cuda`, ...")
    trust_remote_code: bool = False


class RewardDataSection(Section):
    path: Optional[str] = Field(None, description="JSONL of preference pairs {prompt, chosen, rejected} or scalar "
                                "labels {prompt, response, score}.")
    format: Literal["auto", "pairs", "labels"] = Field("auto", description="What `path` holds; `auto` decides from "
                                                       "the first record.")
    dataset: Optional[str] = Field(None, description="A registered task dataset (e.g. `reverse`): pairs are made "
                                   "from its records, the solution against a corrupted solution.")
    options: dict[str, Any] = Field(default_factory=dict, description="The dataset's own options.")
    split: Literal["train", "eval"] = Field("train", description="Which split of `dataset` the pairs come from.")
    corruptions: list[Corruption] = Field(default_factory=lambda: list(CORRUPTIONS), min_length=1,
                                          description="How a rejected response is made from the solution: one "
                                          "character substituted, deleted or inserted, two neighbours swapped, "
                                          "or all shuffled; on request `truncate` (the first letters only) and `double` (two of the others in "
                                          "a row). A kind named twice is drawn twice as often.")
    pairs_per_record: int = Field(1, gt=0)
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seeds the corruptions.")
    chat_template: bool = Field(True, description="Render `dataset` prompts with the tokenizer's chat template "
                                "when it has one (as the PPO run's `data.chat_template`).")
    save_pairs: Optional[str] = Field(None, description="Also write the pairs made from `dataset` to this JSONL.")

    @model_validator(mode="after")
    def _one_source(self) -> "RewardDataSection":
        if (self.path is None) == (self.dataset is None):
            raise ValueError("give exactly one of `path` (a pairs or labels JSONL) and `dataset` (a registered "
                             "task dataset to make preference pairs from)")
        if self.path is not None:
            dataset_only = [name for name in ("options", "save_pairs") if getattr(self, name)]
            if dataset_only:
                raise ValueError(f"{', '.join(dataset_only)} only apply with `dataset`, not with `path`")
        elif self.format != "auto":
            raise ValueError("`format` applies to `path`; a `dataset` always gives preference pairs")
        return self


class NormalizationSection(Section):
    enabled: bool = Field(True, description="Fit gain and bias so the normalised reward has mean 0, std 1 on "
                          "the starting policy's responses (or the data's responses).")
    source: Literal["policy", "data"] = Field("policy", description="`policy`: sample responses from `policy`; "
                                              "`data`: score the data's chosen (or labelled) responses.")
    policy: Optional[str] = Field(None, description="The PPO run's starting policy; defaults to `model.path`.")
    prompts: int = Field(64, gt=1, description="How many prompts (from the data) to sample responses for.")
    max_new_tokens: int = Field(32, gt=0, le=MAX_TOKENS, description="As the PPO run's generation.max_new_tokens.")
    temperature: float = Field(1.0, gt=0, description="As the PPO run's generation.temperature.")
    top_k: int = Field(0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    batch_size: int = Field(32, gt=0, le=MAX_BATCH)


class TrainRewardConfig(Section):
    """The config of ``ppo-core train-reward``."""

    model: RewardModelSection
    data: RewardDataSection
    train: RewardTrainOptions = Field(default_factory=RewardTrainOptions)
    normalization: NormalizationSection = Field(default_factory=NormalizationSection)
    output_dir: str = Field("runs/reward-model", description="The reward model directory to write.")
    threads: Optional[int] = Field(None, gt=0, le=MAX_THREADS, description="torch CPU threads; unset leaves "
                                   "torch's default.")
    plugins: PluginsConfig = Field(default_factory=PluginsConfig, description="Which plugins load (to find "
                                   "`data.dataset`), as in a run config.")


def load_train_reward_config(path: Union[str, Path], overrides: Sequence[str] = ()) -> TrainRewardConfig:
    """Read a YAML/JSON train-reward config, apply ``--set`` overrides, validate (ConfigError names the field)."""
    data = read_config_file(path)
    for assignment in overrides:
        apply_override(data, assignment)
    source = str(path) + (" (with --set " + ", ".join(overrides) + ")" if overrides else "")
    try:
        return TrainRewardConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"{source}: {format_validation_error(error)}") from None


