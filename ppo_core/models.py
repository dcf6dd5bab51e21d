"""Loading the policy, its tokenizer, the critic and the frozen reference model."""

from __future__ import annotations

import copy
import functools
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .config import ModelConfig
from .errors import ConfigError, UserError
from .ppo.value_head import ValueHead

VALUE_HEAD_FILE = "value_head.safetensors"
CRITIC_DIR = "critic"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"model.device: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"model.device: {name!r} asked for, but CUDA is not available")
    return device


_CHECKPOINT_FILES = ("config.json", "tokenizer_config.json", "tokenizer.json")


def _local_path_problem(path: str) -> Optional[str]:
    """Plain words for two common mistakes, instead of transformers' 'bad repo id' or a cut-off message: a path
    that can only be local (absolute, ./, ../, ~) and is missing, and a directory that holds no checkpoint."""
    local = Path(path).expanduser()
    if (local.is_absolute() or path.startswith((".", "~"))) and not local.exists():
        return "no such file or directory"
    if local.is_dir() and not any((local / name).is_file() for name in _CHECKPOINT_FILES):
        return f"the directory is not a transformers checkpoint (it has none of {', '.join(_CHECKPOINT_FILES)})"
    return None


def load_tokenizer(path: str, trust_remote_code: bool = False, field: str = "model.tokenizer"):
    """Load a tokenizer and make sure it can pad left with a pad token distinct from eos.

    ``field`` names where ``path`` came from in messages (``model.path`` when ``model.tokenizer`` is unset)."""
    from transformers import AutoTokenizer

    problem = _local_path_problem(path)
    if problem:
        raise UserError(f"{field}: cannot load a tokenizer from {path!r}: {problem}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise UserError(f"{field}: cannot load a tokenizer from {path!r}: {_first_line(error)}") from None
    if tokenizer.eos_token_id is None:
        raise UserError(f"{field}: the tokenizer at {path!r} has no eos token; set one in its config")
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        # pad == eos would mask every eos out as padding, and the model would never learn to stop.
        tokenizer.add_special_tokens({"pad_token": "<|ppo_core_pad|>"})
    tokenizer.padding_side = "left"
    return tokenizer


def load_causal_lm(path: str, trust_remote_code: bool = False, tokenizer=None,
                   field: str = "model.path") -> nn.Module:
    from transformers import AutoModelForCausalLM

    problem = _local_path_problem(path)
    if problem:
        raise UserError(f"{field}: cannot load a causal LM from {path!r}: {problem}")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise UserError(f"{field}: cannot load a causal LM from {path!r}: {_first_line(error)}") from None
    if tokenizer is not None:
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer))
        model.config.pad_token_id = tokenizer.pad_token_id
        if model.generation_config is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def load_backbone(path: str, trust_remote_code: bool = False, tokenizer=None) -> nn.Module:
    """The base transformer (no LM head) of a checkpoint, for a separate critic or a reward model."""
    from transformers import AutoModel

    try:
        model = AutoModel.from_pretrained(path, dtype=torch.float32, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot load a transformer backbone from {path!r}: {_first_line(error)}") from None
    if tokenizer is not None and len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    return model


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def hidden_size_of(model: nn.Module) -> int:
    config = model.config
    for attribute in ("hidden_size", "n_embd", "d_model"):
        if getattr(config, attribute, None):
            return int(getattr(config, attribute))
    raise UserError(f"cannot tell the hidden size of {type(model).__name__} for the value head")


class FusedGELUTanh(nn.Module):
    """GELU, tanh approximation, as one fused torch kernel: the function of transformers' ``gelu_new``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.gelu(x, approximate="tanh")


def fuse_activations(model: nn.Module) -> nn.Module:
    """Swap transformers' Python tanh-GELU (``NewGELUActivation``, GPT-2's ``gelu_new``: 8 elementwise kernels
    forward and more backward) for torch's fused kernel of the same formula (differences are float rounding,
    below 1e-6). Only the module objects change: the config, and so every saved checkpoint, stays as it was."""
    try:
        from transformers.activations import NewGELUActivation
    except ImportError:  # pragma: no cover - very old or very new transformers
        return model
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is NewGELUActivation:
                setattr(parent, name, FusedGELUTanh())
    return model


@functools.cache
def _forward_argument(model_class: type, names: tuple[str, ...]) -> Optional[str]:
    parameters = inspect.signature(model_class.forward).parameters
    return next((name for name in names if name in parameters), None)


def forward_argument(model: nn.Module, *names: str) -> Optional[str]:
    """The first of ``names`` that the model's forward accepts (transformers renames arguments across
    releases), or None."""
    return _forward_argument(type(model), names)


def logits_to_keep(model: nn.Module, count: int) -> dict:
    """Forward keyword asking a causal LM for the logits of its last ``count`` positions only, or {} when the
    model cannot (it then returns all of them; callers slice the end either way). Real vocabularies make the
    logits over prompt positions the largest tensor of a forward, and nothing reads them."""
    name = forward_argument(model, "logits_to_keep", "num_logits_to_keep")  # transformers >= 4.50, and older
    return {name: count} if name else {}


def disable_dropout(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


@dataclass
class PolicyOutput:
    logits: torch.Tensor
    values: Optional[torch.Tensor]


class ActorCritic(nn.Module):
    """The trained modules: the policy and the critic (a value head on the shared or its own backbone)."""

    def __init__(self, policy: nn.Module, value_head: ValueHead, critic_backbone: Optional[nn.Module] = None):
        super().__init__()
        self.policy = policy
        self.value_head = value_head
        self.critic_backbone = critic_backbone

    @property
    def shared(self) -> bool:
        return self.critic_backbone is None

    def forward(self, input_ids, attention_mask, position_ids, with_values: bool = True,
                last_positions: int = 0) -> PolicyOutput:
        """Logits and values; with ``last_positions`` > 0 only those of the last that many positions."""
        keep = logits_to_keep(self.policy, last_positions) if last_positions else {}
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
        if not with_values:
            return PolicyOutput(self.policy(**inputs, **keep).logits, None)
        if self.shared:
            out = self.policy(**inputs, **keep, output_hidden_states=True)
            hidden = out.hidden_states[-1]
        else:
            out = self.policy(**inputs, **keep)
            hidden = self.critic_backbone(**inputs).last_hidden_state
        if last_positions:
            hidden = hidden[:, -last_positions:]
        return PolicyOutput(out.logits, self.value_head(hidden))

    def critic_parameters(self):
        yield from self.value_head.parameters()
        if not self.shared:
            yield from self.critic_backbone.parameters()

    def save_critic(self, directory: Path) -> None:
        """The value head in safetensors, and a separate critic's backbone with save_pretrained."""
        directory = Path(directory)
        save_file({k: v.contiguous() for k, v in self.value_head.state_dict().items()}, directory / VALUE_HEAD_FILE,
                  metadata={"critic": "shared" if self.shared else "separate"})
        if not self.shared:
            self.critic_backbone.save_pretrained(directory / CRITIC_DIR, safe_serialization=True)

    def load_critic(self, directory: Path) -> None:
        directory = Path(directory)
        self.value_head.load_state_dict(load_file(directory / VALUE_HEAD_FILE))
        if not self.shared:
            from transformers import AutoModel

            backbone = AutoModel.from_pretrained(directory / CRITIC_DIR, dtype=torch.float32)
            self.critic_backbone.load_state_dict(backbone.state_dict())


def build_actor_critic(config: ModelConfig, tokenizer, seed: int) -> ActorCritic:
    policy = load_causal_lm(config.path, config.trust_remote_code, tokenizer)
    critic_backbone = None
    if config.critic == "separate":
        critic_backbone = load_backbone(config.critic_path or config.path, config.trust_remote_code, tokenizer)
    hidden = hidden_size_of(critic_backbone if critic_backbone is not None else policy)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        value_head = ValueHead(hidden, config.value_head_hidden)
    model = ActorCritic(policy, value_head, critic_backbone)
    disable_dropout(model)
    fuse_activations(model)
    return model


def save_model(model: nn.Module, tokenizer, directory: Path) -> None:
    """``save_pretrained`` (transformers alone loads it) and the tokenizer; non-finite weights are refused."""
    from .errors import TrainingError

    for name, param in model.named_parameters():
        if not torch.isfinite(param).all():
            raise TrainingError(f"refusing to save non-finite weights ({name}); the run diverged")
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)


def frozen_copy(model: nn.Module) -> nn.Module:
    """A frozen reference copy of the initial policy."""
    reference = copy.deepcopy(model)
    reference.eval()
    reference.requires_grad_(False)
    return reference
