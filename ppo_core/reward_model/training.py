"""Training a reward model: Bradley-Terry on pairs or MSE on labels, head only on a frozen backbone or the whole
model; held-out pair accuracy."""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from ..config.train_reward import PAIR_KINDS, RewardTrainOptions
from ..modeling.heads import MLPHead
from ..runtime.loop import NonFiniteGuard, stop_requests
from ..runtime.optim import clip_gradients, make_optimizer, make_scheduler
from .data import DataKind, RewardData
from .model import RewardModel, RewardModelError, _fit, _pad_id, right_pad, text_token_ids
from .pairs import pair_kind

# optimizer steps in a row with a non-finite loss or gradient before training stops (as train.max_nonfinite_steps)
MAX_NONFINITE_STEPS = 3


@dataclass
class TrainResult:
    model: RewardModel
    metrics: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)


def build_reward_model(backbone_path: str, tokenizer_path: Optional[str] = None, *, head_hidden: Optional[int] = None,
                       seed: int = 0, trust_remote_code: bool = False, device: Union[str, torch.device] = "cpu",
                       frozen: bool = True, pool: str = "last") -> RewardModel:
    """A fresh reward model: the checkpoint's backbone and a newly initialised head (seeded)."""
    from ..modeling.loading import (
        disable_dropout,
        hidden_size_of,
        load_backbone,
        load_tokenizer,
    )

    tokenizer_path = tokenizer_path or backbone_path
    tokenizer = load_tokenizer(tokenizer_path, trust_remote_code)
    backbone = load_backbone(backbone_path, trust_remote_code, tokenizer)
    disable_dropout(backbone)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = MLPHead(hidden_size_of(backbone), head_hidden, init="normal")
    model = RewardModel(backbone, head, tokenizer, backbone_path=resolve_reference(backbone_path),
                        tokenizer_path=resolve_reference(tokenizer_path), backbone_frozen=frozen,
                        trust_remote_code=trust_remote_code, pool=pool)
    if frozen:
        backbone.requires_grad_(False)
    return model.to(device)


def resolve_reference(path: str) -> str:
    """A local checkpoint path made absolute and resolved (symlinks, ``..``); a hub id unchanged."""
    local = Path(path).expanduser()
    return str(local.resolve()) if local.exists() else path


def train_reward_model(backbone_path: str, data: Union[RewardData, Sequence[Any]],
                       options: Optional[RewardTrainOptions] = None, *, tokenizer_path: Optional[str] = None,
                       device: Union[str, torch.device] = "cpu", trust_remote_code: bool = False,
                       progress: Optional[Callable[[dict[str, float]], None]] = None) -> TrainResult:
    """Train a reward model on pairs (Bradley–Terry) or labels (MSE); see :class:`RewardTrainOptions`.

    Returns the model (normalisation not yet fitted: gain 1, bias 0) and its metrics: ``held_out_accuracy``
    (share of held-out pairs ranked right, ties counting one half; for labels over every held-out pair with
    different labels), ``held_out_mse`` (labels), the same on the training split, and the sizes.
    """
    options = options or RewardTrainOptions()
    if not isinstance(data, RewardData):
        data = RewardData.from_rows(data)
    model = build_reward_model(backbone_path, tokenizer_path, head_hidden=options.head_hidden, seed=options.seed,
                               trust_remote_code=trust_remote_code, device=device,
                               frozen=not options.train_backbone, pool=options.pool)
    if options.train_backbone and options.added_layers:
        add_layers(model.backbone, options.added_layers)
    if options.train_backbone and options.backbone_layers:
        train_top_layers(model.backbone, options.backbone_layers)
    tokenizer = model.tokenizer
    limit = model.max_length
    if data.kind == "pairs":
        rows = [(_fit(text_token_ids(tokenizer, p.prompt, p.chosen, options.append_eos, p.templated), limit),
                 _fit(text_token_ids(tokenizer, p.prompt, p.rejected, options.append_eos, p.templated), limit))
                for p in data.items]
        targets = torch.zeros(len(rows))
        kinds = [pair_kind(p.chosen, p.rejected) for p in data.items]
    else:
        rows = [(_fit(text_token_ids(tokenizer, s.prompt, s.response, options.append_eos, s.templated), limit),)
                for s in data.items]
        targets = torch.tensor([s.score for s in data.items], dtype=torch.float32)
        kinds = []

    generator = torch.Generator().manual_seed(options.seed)
    held_out, train = _split([item.prompt for item in data.items], options.held_out_fraction, generator)

    # a head summing per-token scores trains on the frozen backbone's forward at every step (its input is every token)
    pooled_frozen = not options.train_backbone and options.pool != "sum"
    trainer = _FrozenTrainer(model, rows, options) if pooled_frozen else _FullTrainer(model, rows, options)
    trainer.fit(train, targets, data.kind, generator, progress)
    model.eval()
    metrics: dict[str, Any] = {"kind": data.kind, "train_size": len(train), "held_out_size": len(held_out)}
    for split, indices in (("train", train), ("held_out", held_out)):
        rewards = trainer.rewards(indices)
        metrics.update({f"{split}_{k}": v for k, v in _evaluate(rewards, targets[indices], data.kind).items()})
        if kinds:
            metrics.update({f"{split}_accuracy/{k}": v
                            for k, v in accuracy_by_kind(rewards, [kinds[i] for i in indices]).items()})
    model.training_info = {"options": options.model_dump(mode="json"), "data": data.source, "metrics": metrics}
    return TrainResult(model, metrics, trainer.history)


#: the last layer of each residual branch of a transformer block (GPT-2, Llama-style); zeroed, a block adds nothing
OUTPUT_PROJECTIONS = ("attn.c_proj", "mlp.c_proj", "self_attn.o_proj", "mlp.down_proj")
#: the config fields that count a backbone's blocks (GPT-2, most others)
LAYER_COUNTS = ("n_layer", "num_hidden_layers")


def _blocks_at(backbone: torch.nn.Module, field: str) -> int:
    """The position among the backbone's children of its transformer blocks: its first ``ModuleList`` (GPT-2
    ``h``, Llama ``layers``)."""
    children = [child for _name, child in backbone.named_children()]
    at = next((i for i, child in enumerate(children) if isinstance(child, torch.nn.ModuleList)), None)
    if at is None:
        raise RewardModelError(f"train.{field}: this backbone has no list of transformer blocks; unset it")
    return at


def add_layers(backbone: torch.nn.Module, count: int) -> None:
    """Block expansion: stack ``count`` copies of the top block whose residual branches' output projections are
    zero, so that each starts as the identity; the config counts them (save_pretrained and loading agree)."""
    import copy

    blocks = list(backbone.children())[_blocks_at(backbone, "added_layers")]
    top = blocks[-1]
    for _ in range(count):
        block = copy.deepcopy(top)
        zeroed = [module for name, module in block.named_modules() if name in OUTPUT_PROJECTIONS]
        if not zeroed:
            raise RewardModelError(f"train.added_layers: the backbone's blocks ({type(top).__name__}) have none of "
                                   f"the output projections {', '.join(OUTPUT_PROJECTIONS)} to start them at zero")
        for module in zeroed:
            torch.nn.init.zeros_(module.weight)
            if getattr(module, "bias", None) is not None:
                torch.nn.init.zeros_(module.bias)
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = len(blocks)
        blocks.append(block)
    for field in LAYER_COUNTS:
        if hasattr(backbone.config, field):
            setattr(backbone.config, field, len(blocks))


def train_top_layers(backbone: torch.nn.Module, layers: int) -> None:
    """Freeze the backbone except its top ``layers`` transformer blocks and the modules after the blocks (the
    final norm)."""
    children = list(backbone.children())
    blocks_at = _blocks_at(backbone, "backbone_layers")
    blocks = children[blocks_at]
    if layers > len(blocks):
        raise RewardModelError(f"train.backbone_layers: {layers} is more than the backbone's {len(blocks)} blocks")
    backbone.requires_grad_(False)
    for module in [*blocks[len(blocks) - layers:], *children[blocks_at + 1:]]:
        module.requires_grad_(True)


def _held_out_count(n: int, fraction: float) -> int:
    if fraction <= 0 or n < 2:
        return 0
    return min(max(1, round(n * fraction)), n - 1)


def _split(prompts: Sequence[str], fraction: float, generator: torch.Generator) -> tuple[list[int], list[int]]:
    """(held-out, train) indices. Items sharing a prompt stay on one side (several pairs made from one record
    would otherwise put its chosen response on both sides); with a single prompt, items are split one by one."""
    groups: dict[str, list[int]] = {}
    for index, prompt in enumerate(prompts):
        groups.setdefault(prompt, []).append(index)
    if len(groups) < 2:
        groups = {str(index): [index] for index in range(len(prompts))}
    keys = list(groups)
    wanted = _held_out_count(len(prompts), fraction)
    held: list[int] = []
    for position in torch.randperm(len(keys), generator=generator).tolist():
        if len(held) >= wanted:
            break
        held += groups[keys[position]]
    if len(held) == len(prompts):  # one group took everything: keep some to train on
        held = held[:-1] if len(held) > 1 else []
    chosen = set(held)
    return sorted(chosen), [index for index in range(len(prompts)) if index not in chosen]


def _evaluate(rewards: torch.Tensor, targets: torch.Tensor, kind: DataKind) -> dict[str, Optional[float]]:
    """Pairs: rewards [N, 2] (chosen, rejected). Labels: rewards [N], targets [N]."""
    if rewards.numel() == 0:
        return {"accuracy": None, "loss": None} | ({"mse": None} if kind == "labels" else {})
    if kind == "pairs":
        margin = rewards[:, 0] - rewards[:, 1]
        return {"accuracy": _ranked_right(margin), "loss": float(-F.logsigmoid(margin).mean())}
    mse = float(F.mse_loss(rewards, targets))
    right = total = 0.0
    for start in range(0, rewards.numel(), 1024):  # every ordered pair with different labels, in row chunks
        better = targets[start:start + 1024, None] > targets[None, :]
        margin = (rewards[start:start + 1024, None] - rewards[None, :])[better]
        right += float((margin > 0).double().sum() + 0.5 * (margin == 0).double().sum())
        total += margin.numel()
    return {"accuracy": right / total if total else None, "loss": mse, "mse": mse}


def _ranked_right(margin: torch.Tensor) -> float:
    return float(((margin > 0).double() + 0.5 * (margin == 0).double()).mean())


def accuracy_by_kind(rewards: torch.Tensor, kinds: Sequence[str]) -> dict[str, Optional[float]]:
    """Pair accuracy (rewards [N, 2]: chosen, rejected) over the pairs of each kind in ``PAIR_KINDS`` (what the
    rejected response differs by, :func:`~ppo_core.reward_model.pairs.pair_kind`); None for a kind without pairs,
    ``other`` only when there are some."""
    accuracy: dict[str, Optional[float]] = {}
    for name in PAIR_KINDS:
        rows = [i for i, kind in enumerate(kinds) if kind == name]
        if rows or name != "other":
            accuracy[name] = _ranked_right(rewards[rows, 0] - rewards[rows, 1]) if rows else None
    return accuracy


def with_margin(rewards: torch.Tensor, margin: float) -> torch.Tensor:
    """Pairs' rewards [N, 2] with the chosen one lowered by ``margin``: Bradley–Terry on them is
    -log σ(r_chosen − r_rejected − margin), which keeps pushing a pair apart until it is ``margin`` apart."""
    return rewards - rewards.new_tensor([margin, 0.0]) if margin else rewards


def _loss(rewards: torch.Tensor, targets: torch.Tensor, kind: DataKind) -> torch.Tensor:
    if kind == "pairs":
        return -F.logsigmoid(rewards[:, 0] - rewards[:, 1]).mean()  # Bradley–Terry
    return F.mse_loss(rewards, targets)


class _Trainer(abc.ABC):
    def __init__(self, model: RewardModel, rows: list[tuple[list[int], ...]], options: RewardTrainOptions):
        self.model = model
        self.rows = rows
        self.options = options
        self.history: list[dict[str, float]] = []

    def parameters(self) -> list[dict[str, Any]]:
        return [{"params": list(self.model.head.parameters()), "lr": self.options.lr}]

    @abc.abstractmethod
    def rewards(self, indices: Sequence[int], grad: bool = False) -> torch.Tensor:
        """[len(indices), k] for k sequences per row (2 for pairs), or [len(indices)] for labels."""

    def fit(self, train: list[int], targets: torch.Tensor, kind: DataKind, generator: torch.Generator,
            progress: Optional[Callable[[dict[str, float]], None]]) -> None:
        """``options.epochs`` passes of AdamW steps over ``train`` (shuffled by ``generator``); a step with a
        non-finite loss or gradient is skipped, and ``MAX_NONFINITE_STEPS`` of them in a row stop training.
        SIGINT/SIGTERM stop between steps (nothing is saved: there is no checkpoint to resume from)."""
        options = self.options
        # not fused (yet): the fused kernel rounds differently and moves the demo's published numbers
        optimizer = make_optimizer(self.parameters(), options.lr, options.weight_decay, fused=False)
        if not train:
            return
        batches = math.ceil(len(train) / options.batch_size)
        scheduler = make_scheduler(optimizer, options.epochs * batches)  # constant: lr as given
        params = [p for group in optimizer.param_groups for p in group["params"]]
        guard = NonFiniteGuard(MAX_NONFINITE_STEPS, where="train-reward: ",
                               advice="lower train.lr (train.backbone_lr) or set train.max_grad_norm")
        step = 0
        with stop_requests() as stop:
            for epoch in range(1, options.epochs + 1):
                self.model.train()
                permutation = torch.randperm(len(train), generator=generator).tolist()
                total = correct = 0.0
                seen = 0
                for start in range(0, len(train), options.batch_size):
                    _stop_if_requested(stop, epoch, step)
                    step += 1
                    batch = [train[i] for i in permutation[start:start + options.batch_size]]
                    rewards = self.rewards(batch, grad=True)
                    loss = _loss(with_margin(rewards, options.margin) if kind == "pairs" else rewards,
                                 targets[batch], kind)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    grad_norm = clip_gradients(params, options.max_grad_norm)
                    if not guard.check(float(loss.detach()), grad_norm, at=f"epoch {epoch}, step {step}"):
                        optimizer.zero_grad(set_to_none=True)
                        continue
                    optimizer.step()
                    scheduler.step()
                    total += float(loss.detach()) * len(batch)
                    seen += len(batch)
                    if kind == "pairs":
                        correct += _ranked_right(rewards[:, 0].detach() - rewards[:, 1].detach()) * len(batch)
                entry = {"epoch": float(epoch), "loss": total / seen if seen else math.nan}
                if kind == "pairs":
                    entry["accuracy"] = correct / seen if seen else math.nan
                self.history.append(entry)
                if progress is not None:
                    progress(entry)
            _stop_if_requested(stop, options.epochs, step)


def _stop_if_requested(stop: list[str], epoch: int, step: int) -> None:
    # as the default SIGINT handler would, but between steps: the CLI exits 130 ("interrupted")
    if stop:
        raise KeyboardInterrupt(f"{stop[0]} during reward training at epoch {epoch} after step {step}; nothing saved")


class _FrozenTrainer(_Trainer):
    """Head only: the frozen backbone's last-token features are computed once, then the head trains on them."""

    def __init__(self, model, rows, options):
        super().__init__(model, rows, options)
        model.eval()
        flat = [sequence for row in rows for sequence in row]
        with torch.no_grad():
            features = []
            for start in range(0, len(flat), options.batch_size):
                input_ids, attention_mask = right_pad(flat[start:start + options.batch_size], _pad_id(model.tokenizer))
                features.append(model.hidden(input_ids.to(model.device), attention_mask.to(model.device)))
        width = len(rows[0]) if rows else 1
        self.features = torch.cat(features).view(len(rows), width, -1) if features else None

    def rewards(self, indices, grad=False):
        with torch.set_grad_enabled(grad):
            rewards = self.model.head(self.features[list(indices)])
        return rewards if rewards.size(1) > 1 else rewards[:, 0]


class _FullTrainer(_Trainer):
    """Backbone and head: every step runs the backbone on the batch (chosen and rejected in one forward)."""

    def parameters(self):
        trained = [p for p in self.model.backbone.parameters() if p.requires_grad]  # train.backbone_layers
        return super().parameters() + [{"params": trained,
                                        "lr": self.options.backbone_lr or self.options.lr}]

    def rewards(self, indices, grad=False):
        if not grad:
            self.model.eval()
        width = len(self.rows[0]) if self.rows else 1
        flat = [sequence for i in indices for sequence in self.rows[i]]
        size = self.options.batch_size * width
        values = [self._score(flat[s:s + size], grad) for s in range(0, len(flat), size)]
        rewards = torch.cat(values).view(len(indices), width) if values else torch.zeros(0, width)
        return rewards if width > 1 else rewards[:, 0]

    def _score(self, sequences, grad):
        input_ids, attention_mask = right_pad(sequences, _pad_id(self.model.tokenizer))
        with torch.set_grad_enabled(grad):
            return self.model(input_ids.to(self.model.device), attention_mask.to(self.model.device))
