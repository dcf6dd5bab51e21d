"""Fully sharded data parallel (``train.parallel: fsdp``): torch's FSDP2, ``torch.distributed.fsdp.fully_shard``.

Each rank holds 1/N of every trained weight, its gradient and its Adam moments (and 1/N of the frozen reference);
a forward gathers one transformer block at a time and frees it after (the backward again, then reduce-scatters the
gradients). The run is the data-parallel one (runtime/distributed.py): the same ranks, batch shares, token-weighted
losses (Eq. 19) and rank-0-only writing. Three things differ, and they are here:

- :func:`shard_modules`: every block of the model's ``_no_split_modules`` classes is one FSDP unit, the model its
  root; gradients are *summed* over the ranks (divide factor 1), since each rank's loss already carries its global
  weight (the DDP path's all-reduce sums too).
- :func:`full_state_dict` / :func:`full_optimizer_state`: a checkpoint and the final model are full, unsharded state
  dicts gathered to rank 0's CPU (a collective: every rank calls them), written as the one-process run writes them
  (``save_pretrained`` with ``state_dict=``, as veRL, OpenRLHF and accelerate do), so transformers loads them alone.
- :func:`load_weights` / :func:`load_optimizer_state`: a resume puts those full dicts back into the shards.

In one process nothing here runs: the modules stay plain and :func:`load_weights` is ``load_state_dict``.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Optional

import torch
from torch import nn

from ..errors import ConfigError
from .distributed import Distributed

# what fully sharding does not support in this project (yet): config field -> why, in the refusal's words
UNSUPPORTED = {
    "model.lora": "LoRA adapters (a few MB: data parallel, train.parallel ddp, is what they need)",
    "model.critic separate": "a separate critic backbone",
    "train.precision fp16": "fp16 loss scaling (torch's GradScaler does not reduce over shards; use bf16)",
    "train.eval_every": "held-out evaluation during training (rank 0 evaluates alone; a sharded policy needs every "
                        "rank; run `ppo-core eval` on the final model)",
}


def unsupported_fields(config) -> list[str]:
    """The fields of ``config`` (a RunConfig) that ``train.parallel: fsdp`` refuses, in UNSUPPORTED's order."""
    found = {"model.lora": config.model.lora is not None,
             "model.critic separate": config.model.critic == "separate",
             "train.precision fp16": config.train.precision == "fp16",
             "train.eval_every": bool(config.train.eval_every)}
    return [field for field in UNSUPPORTED if found[field]]


def check_fsdp(config, source: str = "config") -> None:
    """``train.parallel: fsdp`` runs under torchrun with at least 2 processes, without what UNSUPPORTED names."""
    if config.train.parallel != "fsdp":
        return
    if int(os.environ.get("WORLD_SIZE", "1")) < 2 or "RANK" not in os.environ:
        raise ConfigError(f"{source}: train.parallel: fsdp shards the model over torchrun's processes; start it "
                          f"with `torchrun --nproc-per-node N ppo-core train ...` (N >= 2), or use train.parallel ddp")
    refused = unsupported_fields(config)
    if refused:
        raise ConfigError(f"{source}: train.parallel: fsdp does not support {refused[0]}: {UNSUPPORTED[refused[0]]}")


# the backend's errors start with its source location: "[.../gloo/transport/tcp/pair.cc:553] Connection closed..."
BACKEND_ERROR = re.compile(r"^\[[^\]]*(gloo|nccl|c10d)[^\]]*\]")


@contextmanager
def peer_failures(dist: Distributed, what: str) -> Iterator[None]:
    """FSDP's own collectives (a forward's all-gathers, a backward's reduce-scatters, a checkpoint's gathers) raise
    the backend's RuntimeError when another rank stopped: that one becomes the DistributedError naming this rank,
    as the data-parallel collectives' failures do; any other error passes unchanged."""
    try:
        yield
    except RuntimeError as error:
        if not (dist.sharded and BACKEND_ERROR.match(str(error))):
            raise
        with dist.collective(what):
            raise


def sharded_step(dist: Distributed, step: Callable[[], dict]) -> Callable[[], dict]:
    """``step`` inside :func:`peer_failures` under FSDP; ``step`` itself otherwise (nothing added elsewhere)."""
    if not dist.sharded:
        return step

    def guarded() -> dict:
        with peer_failures(dist, "a sharded forward or backward pass"):
            return step()

    return guarded


# ---- sharding --------------------------------------------------------------------------------------------
def device_mesh(device: torch.device):
    """The one-dimensional mesh of every rank (CPU ranks: gloo; CUDA: one device each, nccl)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (dist.get_world_size(),))


def block_units(module: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a transformers model: its ``_no_split_modules`` classes (accelerate's FSDP wrap
    policy reads the same attribute); none for a module without it (a value head: one unit)."""
    names = set(getattr(module, "_no_split_modules", None) or ())
    return [sub for sub in module.modules() if sub is not module and type(sub).__name__ in names]


def shard_modules(modules: Iterable[Optional[nn.Module]], device: torch.device) -> None:
    """``fully_shard`` each module in place (None skipped): its blocks, then the module itself, each its own FSDP
    root (the policy alone runs the sampler's forwards). Gradients are summed over ranks, not averaged."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    mesh = device_mesh(device)
    for module in modules:
        if module is None:
            continue
        for block in block_units(module):
            fully_shard(block, mesh=mesh)
        fully_shard(module, mesh=mesh)
        for unit in module.modules():
            if isinstance(unit, FSDPModule):
                unit.set_gradient_divide_factor(1.0)
                unit.set_force_sum_reduction_for_comms(True)  # a plain SUM: gloo has no PREMUL_SUM
                # a parameter this rank's loss did not reach contributes zeros, as in the DDP path
                unit.set_reduce_scatter_unused_params(True, recurse=False)


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(unit, FSDPModule) for unit in module.modules())


# ---- full state dicts ------------------------------------------------------------------------------------
def _full_options(**extra):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **extra)


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded weights on rank 0's CPU (other ranks: an empty dict). Every rank must call it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(module, options=_full_options(cpu_offload=True))


def full_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's unsharded state (keyed by parameter name) on rank 0's CPU. Every rank must call it."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(module, optimizer, options=_full_options(cpu_offload=True))


def load_weights(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """A full state dict into ``module``: its shards when it is sharded (every rank passes the full dict)."""
    if not is_sharded(module):
        module.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(module, dict(state), options=_full_options())  # a copy: it puts shards into the dict


def load_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> dict:
    """:func:`full_optimizer_state`'s dict into the sharded ``optimizer`` (``state`` gets shards in place of its
    tensors); returns the optimizer's own (sharded) state dict, the form ``optimizer.load_state_dict`` takes."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(module, optimizer, state, options=_full_options())  # ``state`` is consumed: no copy
    return optimizer.state_dict()


def gathered_training_state(model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None) -> dict:
    """What a checkpoint writes of an actor-critic (``policy``, ``value_head`` or None) and of its optimizer (None
    without one), unsharded on rank 0 (:func:`full_state_dict`); every rank calls it."""
    value_head = getattr(model, "value_head", None)
    return {"policy": full_state_dict(model.policy),
            "value_head": full_state_dict(value_head) if value_head is not None else None,
            "optimizer": full_optimizer_state(model, optimizer) if optimizer is not None else None}
