"""Fully sharded data parallel (``train.parallel: fsdp``, runtime/fsdp.py): what it refuses, the helpers that gather
and restore full state dicts (in a one-rank process group of this process), and 2 gloo ranks whose weights after 3
updates are the one-process run's, with a final directory transformers loads."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from dp_worker import equivalence_sections
from test_distributed import max_weight_difference, two_ranks_and_one_process

from ppo_core.config import load_config
from ppo_core.errors import ConfigError
from ppo_core.runtime.distributed import SINGLE_PROCESS, Distributed, DistributedError
from ppo_core.runtime.fsdp import (block_units, check_fsdp, full_optimizer_state, full_state_dict, is_sharded,
                                   load_optimizer_state, load_weights, shard_modules, sharded_step)


def fsdp_config(model_dir, tmp_path, **train):
    sections = equivalence_sections(model_dir, tmp_path)
    sections["train"].update(parallel="fsdp", **train)
    return load_config(None, [], base=sections)


def test_fsdp_needs_torchrun_and_names_what_it_does_not_support(tiny_model_dir, tmp_path, monkeypatch):
    assert load_config(None, [], base=equivalence_sections(tiny_model_dir, tmp_path)).train.parallel == "ddp"
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ConfigError, match=r"run.yaml: train.parallel: fsdp shards the model over torchrun's proc"):
        check_fsdp(fsdp_config(tiny_model_dir, tmp_path), "run.yaml")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    check_fsdp(fsdp_config(tiny_model_dir, tmp_path), "run.yaml")  # under torchrun: accepted
    with pytest.raises(ConfigError, match=r"fsdp does not support train.eval_every: held-out evaluation"):
        check_fsdp(fsdp_config(tiny_model_dir, tmp_path, eval_every=2), "run.yaml")
    separate = fsdp_config(tiny_model_dir, tmp_path)
    separate.model.critic = "separate"
    with pytest.raises(ConfigError, match=r"fsdp does not support model.critic separate"):
        check_fsdp(separate, "run.yaml")


def test_a_peer_lost_inside_fsdp_collectives_is_named_and_other_errors_pass():
    def lost_peer():
        raise RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer")

    def own_fault():
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    step = lambda: {"kl": 0.0}  # noqa: E731
    assert sharded_step(SINGLE_PROCESS, step) is step and sharded_step(Distributed(0, 2), step) is step
    sharded = Distributed(rank=1, world_size=2, sharded=True)
    with pytest.raises(DistributedError, match=r"^rank 1 of 2: a sharded forward or backward pass failed: another "
                                               r"rank stopped .*\(Connection closed by peer\)$"):
        sharded_step(sharded, lost_peer)()
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        sharded_step(sharded, own_fault)()


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x):
        return torch.tanh(self.linear(x))


class TwoBlocks(nn.Module):
    _no_split_modules = ["Block"]

    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(Block(), Block())
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        return self.out(self.blocks(x))


@pytest.fixture
def one_rank_group(tmp_path):
    """A process group of this process alone (FSDP over 1 rank: the shards are the whole tensors)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_sharded_state_dicts_gather_and_load_back(one_rank_group):
    torch.manual_seed(0)
    plain, sharded = TwoBlocks(), TwoBlocks()
    sharded.load_state_dict(plain.state_dict())
    assert [type(b).__name__ for b in block_units(plain)] == ["Block", "Block"] and not is_sharded(plain)
    shard_modules([sharded, None], torch.device("cpu"))
    assert is_sharded(sharded) and type(sharded.blocks[0]).__name__ == "FSDPBlock"

    optimizers = [torch.optim.AdamW(m.parameters(), lr=0.1) for m in (plain, sharded)]
    for model, optimizer in zip((plain, sharded), optimizers):
        model(torch.ones(3, 4)).sum().backward()
        optimizer.step()
    full = full_state_dict(sharded)
    assert full.keys() == plain.state_dict().keys()
    assert all(type(v) is torch.Tensor and torch.allclose(v, plain.state_dict()[k]) for k, v in full.items())
    saved_optimizer = full_optimizer_state(sharded, optimizers[1])
    assert torch.allclose(saved_optimizer["state"]["out.weight"]["exp_avg"], optimizers[0].state_dict()["state"][4]
                          ["exp_avg"])

    restored = TwoBlocks()  # a resume: a fresh sharded model and optimizer take the full dicts back
    shard_modules([restored], torch.device("cpu"))
    load_weights(restored, full)
    optimizer = torch.optim.AdamW(restored.parameters(), lr=0.1)
    load_optimizer_state(restored, optimizer, copy.deepcopy(saved_optimizer))
    assert all(torch.equal(v, full[k]) for k, v in full_state_dict(restored).items())
    assert torch.equal(full_optimizer_state(restored, optimizer)["state"]["out.weight"]["exp_avg_sq"],
                       saved_optimizer["state"]["out.weight"]["exp_avg_sq"])
    load_weights(plain, full)  # a plain module: load_state_dict


@pytest.mark.slow
def test_two_fsdp_ranks_give_the_one_process_update_and_a_loadable_model(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    one, (sharded, other), out = two_ranks_and_one_process("fsdp", tiny_model_dir, tmp_path)
    assert other["weights"] == {}  # rank 0 alone holds the full weights

    difference = max_weight_difference(one["weights"], sharded["weights"])
    print(f"max |w_1 process - w_2 fsdp ranks| after 3 updates: {difference:.3g}")
    assert difference < 1e-5
    assert max_weight_difference(one["initial"], one["weights"]) > 1e-3  # and the updates did move them
    assert abs(one["kl_coef"] - sharded["kl_coef"]) < 1e-6
    for mine, theirs in zip(one["stats"], sharded["stats"]):
        for key in ("kl", "loss/total", "entropy", "grad_norm", "value/mean"):
            assert mine[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-5), key

    final = AutoModelForCausalLM.from_pretrained(Path(f"{out}.final"), dtype=torch.float32).state_dict()
    policy = {k: sharded["weights"][f"policy.{k}"] for k in final}
    assert max_weight_difference(final, policy) == 0.0
    head = load_file(Path(f"{out}.final") / "value_head.safetensors")
    assert max_weight_difference(head, {k: sharded["weights"][f"value_head.{k}"] for k in head}) == 0.0
