"""The trained modules: the policy and its critic (an MLP value head on the shared or its own backbone, or none)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..config import ModelConfig
from ..modeling.checkpointing import enable_gradient_checkpointing
from ..modeling.compat import fuse_activations, logits_to_keep
from ..modeling.heads import MLPHead
from ..modeling.lora import add_lora
from ..modeling.loading import (
    disable_dropout,
    hidden_size_of,
    load_backbone,
    load_causal_lm,
)
from ..runtime.fsdp import load_weights

VALUE_HEAD_FILE = "value_head.safetensors"
CRITIC_DIR = "critic"


@dataclass
class PolicyOutput:
    logits: torch.Tensor
    values: Optional[torch.Tensor]


class ActorCritic(nn.Module):
    """The trained modules: the policy and the critic (a value head on the shared or its own backbone; no value head
    for the critic-free estimators, ``model.critic: none``)."""

    def __init__(self, policy: nn.Module, value_head: Optional[MLPHead],
                 critic_backbone: Optional[nn.Module] = None):
        super().__init__()
        self.policy = policy
        self.value_head = value_head
        self.critic_backbone = critic_backbone

    @property
    def shared(self) -> bool:
        return self.critic_backbone is None

    @property
    def has_critic(self) -> bool:
        return self.value_head is not None

    def forward(self, input_ids, attention_mask, position_ids, with_values: bool = True,
                last_positions: int = 0) -> PolicyOutput:
        """Logits and values (None without a critic); with ``last_positions`` > 0 only those of the last that many
        positions."""
        keep = logits_to_keep(self.policy, last_positions) if last_positions else {}
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
        if not with_values or not self.has_critic:
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
        if not self.has_critic:
            return
        yield from self.value_head.parameters()
        if not self.shared:
            yield from self.critic_backbone.parameters()

    def save_critic(self, directory: Path, value_head_state: Optional[dict] = None) -> None:
        """The value head in safetensors (``value_head_state``: a sharded head's, gathered), and a separate critic's
        backbone with save_pretrained (nothing without a critic)."""
        if not self.has_critic:
            return
        directory = Path(directory)
        state = value_head_state if value_head_state is not None else self.value_head.state_dict()
        save_file({k: v.contiguous() for k, v in state.items()}, directory / VALUE_HEAD_FILE,
                  metadata={"critic": "shared" if self.shared else "separate"})
        if not self.shared:
            self.critic_backbone.save_pretrained(directory / CRITIC_DIR, safe_serialization=True)

    def load_critic(self, directory: Path) -> None:
        if not self.has_critic:
            return
        directory = Path(directory)
        load_weights(self.value_head, load_file(directory / VALUE_HEAD_FILE))  # into its shards under FSDP
        if not self.shared:
            from transformers import AutoModel

            backbone = AutoModel.from_pretrained(directory / CRITIC_DIR, dtype=torch.float32)
            self.critic_backbone.load_state_dict(backbone.state_dict())


def build_actor_critic(config: ModelConfig, tokenizer, seed: int) -> ActorCritic:
    policy = load_causal_lm(config.path, config.trust_remote_code, tokenizer)
    if config.lora is not None:
        policy = add_lora(policy, config.lora, config.path)
    critic_backbone = None
    if config.critic == "separate":
        critic_backbone = load_backbone(config.critic_path or config.path, config.trust_remote_code, tokenizer)
    value_head = None
    if config.critic != "none":
        hidden = hidden_size_of(critic_backbone if critic_backbone is not None else policy)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            value_head = MLPHead(hidden, config.value_head_hidden, init="zero_output")
    model = ActorCritic(policy, value_head, critic_backbone)
    if config.gradient_checkpointing:
        for backbone in (policy, critic_backbone):
            if backbone is not None:
                enable_gradient_checkpointing(backbone)
    disable_dropout(model)
    fuse_activations(model)
    return model
