"""The saved reward-model directory: reward_model.json, reward_head.safetensors, and backbone/ when trained."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Optional, Union

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import UserError, format_validation_error
from ..modeling.heads import MLPHead
from .model import RewardModel, RewardModelError

REWARD_MODEL_FILE = "reward_model.json"
REWARD_HEAD_FILE = "reward_head.safetensors"
BACKBONE_DIR = "backbone"
#: what a saved reward model directory holds; --overwrite replaces nothing else
SAVED_ENTRIES = {REWARD_MODEL_FILE, REWARD_HEAD_FILE, BACKBONE_DIR}
FORMAT_NAME = "ppo-core-reward-model"
FORMAT_VERSION = 1


class BackboneRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="The checkpoint the frozen backbone is (absolute path or hub id), or "
                      "`backbone` (relative to the directory) when it was trained and saved here.")
    frozen: bool


class RewardModelInfo(BaseModel):
    """The contents of ``reward_model.json``."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["ppo-core-reward-model"] = FORMAT_NAME
    version: int = FORMAT_VERSION
    backbone: BackboneRef
    tokenizer: str = Field(description="Tokenizer path (relative paths are inside the directory) or hub id.")
    hidden_size: int = Field(gt=0)
    head_hidden: int = Field(gt=0)
    pool: Literal["last", "mean", "sum"] = Field("last", description="What the head reads (train.pool): the last "
                                                 "real token's final hidden state, their mean, or each token's, "
                                                 "summed; a directory without it: `last`.")
    gain: float = Field(1.0, allow_inf_nan=False)
    bias: float = Field(0.0, allow_inf_nan=False)
    trust_remote_code: bool = False
    normalization: Optional[dict[str, Any]] = None
    training: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_version(self) -> "RewardModelInfo":
        if self.version != FORMAT_VERSION:
            raise ValueError(f"version {self.version} is not supported (this ppo-core reads version {FORMAT_VERSION})")
        return self

    def resolve(self, directory: Path, path: str) -> str:
        """A path from the file: relative ones are inside ``directory``."""
        if Path(path).is_absolute():
            return path
        inside = directory / path
        return str(inside) if inside.exists() else path


def save_reward_model(model: RewardModel, directory: Union[str, Path]) -> Path:
    """Write the reward model directory atomically (see the module docstring); returns its path."""
    from safetensors.torch import save_file

    from ..runtime.checkpoints import write_atomically

    for name, param in model.named_parameters():
        if not torch.isfinite(param).all():
            raise UserError(f"refusing to save non-finite reward model weights ({name})")
    if model.backbone_frozen:
        if model.backbone_path is None:
            raise UserError("a frozen-backbone reward model needs the path of its backbone checkpoint to be saved")
        backbone = BackboneRef(path=model.backbone_path, frozen=True)
        tokenizer = model.tokenizer_path or model.backbone_path
    else:
        backbone = BackboneRef(path=BACKBONE_DIR, frozen=False)
        tokenizer = BACKBONE_DIR
    info = RewardModelInfo(backbone=backbone, tokenizer=tokenizer, hidden_size=model.head.hidden_size,
                           head_hidden=model.head.inner_size, pool=model.pool, gain=model.gain, bias=model.bias,
                           trust_remote_code=model.trust_remote_code, normalization=model.normalization,
                           training=model.training_info)

    def write(tmp: Path) -> None:
        state = {k: v.detach().contiguous().cpu() for k, v in model.head.state_dict().items()}
        save_file(state, str(tmp / REWARD_HEAD_FILE), metadata={"format": FORMAT_NAME})
        if not model.backbone_frozen:
            model.backbone.save_pretrained(tmp / BACKBONE_DIR, safe_serialization=True)
            model.tokenizer.save_pretrained(tmp / BACKBONE_DIR)
        (tmp / REWARD_MODEL_FILE).write_text(json.dumps(info.model_dump(mode="json"), indent=2) + "\n",
                                             encoding="utf-8")

    return write_atomically(Path(directory), write)


def read_reward_model_info(directory: Union[str, Path]) -> RewardModelInfo:
    """Read and validate ``reward_model.json``; :class:`RewardModelError` names what is wrong."""
    directory = Path(directory)
    if not directory.exists():
        raise RewardModelError(f"reward model directory {str(directory)!r} does not exist (train one with "
                               f"`ppo-core train-reward CONFIG`)")
    if not directory.is_dir():
        raise RewardModelError(f"{str(directory)!r} is not a directory; a reward model is a directory holding "
                               f"{REWARD_MODEL_FILE} and {REWARD_HEAD_FILE}")
    path = directory / REWARD_MODEL_FILE
    if not path.is_file():
        raise RewardModelError(f"{str(directory)!r} is not a reward model directory: it has no {REWARD_MODEL_FILE} "
                               f"(train one with `ppo-core train-reward CONFIG`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RewardModelError(f"{path}: not valid JSON: {error}") from None
    try:
        return RewardModelInfo.model_validate(data)
    except ValidationError as error:
        raise RewardModelError(f"{path}: {format_validation_error(error)}") from None


def load_reward_head(directory: Union[str, Path], info: Optional[RewardModelInfo] = None) -> MLPHead:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    info = info or read_reward_model_info(directory)
    path = directory / REWARD_HEAD_FILE
    if not path.is_file():
        raise RewardModelError(f"{directory}: {REWARD_HEAD_FILE} is missing; the reward model directory is incomplete")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise RewardModelError(f"{path}: cannot read the head's weights: {error}") from None
    head = MLPHead(info.hidden_size, info.head_hidden, init="normal")
    try:
        head.load_state_dict(state)
    except RuntimeError as error:
        raise RewardModelError(f"{path}: the weights do not fit a head of hidden size {info.hidden_size} and "
                               f"width {info.head_hidden} ({REWARD_MODEL_FILE}): {' '.join(str(error).split())}") from None
    return head


def check_remote_code(info: RewardModelInfo, directory: Path, allow_remote_code: bool) -> None:
    """Only the run config turns remote code on: a ``reward_model.json`` asking for it is refused otherwise,
    before anything from the directory's backbone or tokenizer is loaded."""
    if info.trust_remote_code and not allow_remote_code:
        raise RewardModelError(f"{directory / REWARD_MODEL_FILE}: trust_remote_code: the reward model asks to run "
                               f"the Python code shipped with its backbone or tokenizer; refused, as the run "
                               f"config does not allow remote code (model.trust_remote_code: true would)")


def load_reward_model(directory: Union[str, Path], device: Union[str, torch.device] = "cpu",
                      with_backbone: bool = True, allow_remote_code: bool = False) -> RewardModel:
    """Load a saved reward model (the backbone in eval mode, dropout off, frozen).

    ``with_backbone=False`` loads the head and tokenizer only, for :meth:`RewardModel.score_hidden`.
    A directory whose ``reward_model.json`` sets ``trust_remote_code`` loads only with ``allow_remote_code``
    (the run config's ``model.trust_remote_code``): the file alone never runs code.
    """
    from ..modeling.loading import (
        disable_dropout,
        hidden_size_of,
        load_backbone,
        load_tokenizer,
    )

    directory = Path(directory)
    info = read_reward_model_info(directory)
    check_remote_code(info, directory, allow_remote_code)
    head = load_reward_head(directory, info)
    tokenizer_path = info.resolve(directory, info.tokenizer)
    backbone_path = info.resolve(directory, info.backbone.path)
    try:
        tokenizer = load_tokenizer(tokenizer_path, info.trust_remote_code)
    except UserError as error:
        raise RewardModelError(f"{directory / REWARD_MODEL_FILE}: tokenizer: {error}") from None
    backbone = None
    if with_backbone:
        try:
            backbone = load_backbone(backbone_path, info.trust_remote_code, tokenizer)
        except UserError as error:
            raise RewardModelError(f"{directory / REWARD_MODEL_FILE}: backbone.path: {error}") from None
        if hidden_size_of(backbone) != info.hidden_size:
            raise RewardModelError(f"{directory / REWARD_MODEL_FILE}: the backbone at {backbone_path!r} has hidden "
                                   f"size {hidden_size_of(backbone)}, the head was trained on {info.hidden_size}")
        disable_dropout(backbone)
        backbone.eval()
        backbone.requires_grad_(False)
    model = RewardModel(backbone, head, tokenizer, gain=info.gain, bias=info.bias,
                        backbone_path=backbone_path if info.backbone.frozen else str(directory.resolve() / BACKBONE_DIR),
                        tokenizer_path=tokenizer_path, backbone_frozen=info.backbone.frozen,
                        trust_remote_code=info.trust_remote_code, pool=info.pool)
    model.normalization = info.normalization
    model.training_info = info.training
    model.requires_grad_(False)
    return model.eval().to(device)
