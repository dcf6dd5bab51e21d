"""LoRA adapters through peft (the optional extra ``ppo-core[lora]``): the policy trains low-rank adapters, and
the frozen reference is the same weights with the adapters switched off, so there is no second copy of the model.

A PPO run with ``model.lora`` saves the adapters (``adapter_config.json`` + ``adapter_model.safetensors``, peft's
own format) in its checkpoints and final output; ``model.lora.save_merged`` also writes ``final/merged``, a full
``save_pretrained`` model with the adapters folded in. :func:`load_adapter_model` loads an adapter directory as
one plain causal LM (base + adapters, merged), which is how ``ppo-core eval`` and a warm start read it.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ..errors import ConfigError, UserError
from .loading import frozen_copy

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MERGED_DIR = "merged"


def _peft():
    try:
        import peft
    except ImportError:
        raise ConfigError("model.lora: LoRA needs peft; pip install 'ppo-core[lora]'") from None
    return peft


def add_lora(model: nn.Module, lora: Any, base_path: str) -> nn.Module:
    """``model`` wrapped by peft with fresh adapters as ``lora`` (the config's ``model.lora``) says; only the
    adapters require a gradient. The adapter config names the base by absolute path when it is a local folder."""
    peft = _peft()
    settings = peft.LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                               target_modules=lora.target_modules, bias="none")
    try:
        wrapped = peft.get_peft_model(model, settings)
    except ValueError as error:  # e.g. target modules not found in the model
        raise ConfigError(f"model.lora.target_modules: {' '.join(str(error).split())}") from None
    local = Path(base_path)
    wrapped.peft_config["default"].base_model_name_or_path = str(local.resolve()) if local.is_dir() else base_path
    return wrapped


def is_adapter_model(model: nn.Module) -> bool:
    return callable(getattr(model, "disable_adapter", None)) and hasattr(model, "peft_config")


class AdapterFreeView(nn.Module):
    """The policy with its adapters switched off: the frozen base model, used as the reference. It owns no
    parameters (the policy does), so it adds no memory; peft's ``disable_adapter`` does the switching."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self._policy = (policy,)  # a tuple, so the policy is not registered as a submodule of the view

    @property
    def config(self):
        return self._policy[0].config

    def get_base_model(self) -> nn.Module:
        """The underlying transformers model (for forward-signature checks, as on a peft model)."""
        return self._policy[0].get_base_model()

    def forward(self, **inputs):
        policy = self._policy[0]
        with policy.disable_adapter():
            return policy(**inputs)


def frozen_reference(policy: nn.Module) -> nn.Module:
    """The reference PPO's KL is measured against: the adapter-free view of a LoRA policy, or a frozen copy."""
    return AdapterFreeView(policy) if is_adapter_model(policy) else frozen_copy(policy)


def load_adapter_weights(policy: nn.Module, directory: Path) -> None:
    """Put the adapters saved in ``directory`` (by save_pretrained of a peft model) into ``policy``."""
    from safetensors.torch import load_file

    peft = _peft()
    result = peft.set_peft_model_state_dict(policy, load_file(Path(directory) / ADAPTER_WEIGHTS))
    unexpected = list(getattr(result, "unexpected_keys", []))
    if unexpected:
        raise UserError(f"{directory}: adapter weights that the policy has no place for: {unexpected[:3]}")


def adapter_base(directory: Path) -> Optional[str]:
    """The base model an adapter directory names, or None when ``directory`` holds no adapter."""
    config = Path(directory) / ADAPTER_CONFIG
    if not config.is_file() or (Path(directory) / "config.json").is_file():
        return None
    try:
        return json.loads(config.read_text(encoding="utf-8"))["base_model_name_or_path"]
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"{config}: not a peft adapter config ({type(error).__name__}: {error})") from None


def load_adapter_model(directory: Path, base: nn.Module) -> nn.Module:
    """``base`` with the adapters of ``directory`` merged into its weights: one plain causal LM."""
    peft = _peft()
    model = peft.PeftModel.from_pretrained(base, str(directory), is_trainable=False)
    return model.merge_and_unload()


def merged_copy(policy: nn.Module) -> nn.Module:
    """A plain model with the policy's adapters folded in; the policy itself keeps training unchanged."""
    with torch.no_grad():
        return copy.deepcopy(policy).merge_and_unload()
