"""Learned reward models: a transformer backbone plus an MLP head on the last real token's final hidden state.

The pieces, in the order a user meets them:

1. data: preference pairs ``{"prompt", "chosen", "rejected"}`` or scalar labels ``{"prompt", "response",
   "score"}`` from JSONL (:func:`read_reward_data`), or pairs made from a task dataset by corrupting each
   record's solution (:func:`make_preference_pairs`, :func:`write_jsonl`);
2. training (:func:`train_reward_model`): Bradley–Terry ``-log σ(r_chosen − r_rejected)`` on pairs, or MSE on
   labels; head only on a frozen backbone (the backbone's features are computed once) or the whole model;
   reports held-out pair accuracy (and MSE for labels);
3. normalisation (:func:`normalize_on_policy`, :func:`normalize_on_responses`): ``gain`` and ``bias`` such that
   ``gain·raw + bias`` has mean 0 and std 1 on the starting policy's responses;
4. the saved directory (:func:`save_reward_model`, :func:`load_reward_model`)::

       reward_model.json         what the head reads: backbone reference, tokenizer, hidden size, gain, bias
       reward_head.safetensors   the head's weights
       backbone/                 only when the backbone was trained: save_pretrained model and tokenizer

   No pickle: weights in safetensors, the rest in JSON; written atomically.

The token sequence a reward model scores is exactly the engine's: ``tokenizer(prompt)["input_ids"]`` (with
the tokenizer's special tokens, e.g. a leading bos), then the response tokens, then eos when the response
stopped at one (:func:`sample_token_ids`). The score is read at the last real token (the eos where there is
one), with position ids ``cumsum(mask) − 1``, so left and right padding give the same score.

``ppo-core train-reward CONFIG`` (:class:`TrainRewardConfig`, :func:`run_train_reward`) does all four steps;
the ``ppo-core-reward-model`` plugin serves the result as the reward ``reward_model``.
"""

from __future__ import annotations

import abc
import json
import math
import os
import random
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn

from .api import Record, Sample, format_validation_error
from .config import PluginsConfig, Section
from .errors import ConfigError, DataError, UserError
from .ppo.functional import last_token_index
from .ppo.rollout import position_ids_from_mask

REWARD_MODEL_FILE = "reward_model.json"
REWARD_HEAD_FILE = "reward_head.safetensors"
BACKBONE_DIR = "backbone"
FORMAT_NAME = "ppo-core-reward-model"
FORMAT_VERSION = 1

CORRUPTIONS = ("substitute", "delete", "shuffle")
Corruption = Literal["substitute", "delete", "shuffle"]
DataKind = Literal["pairs", "labels"]

__all__ = [
    "CORRUPTIONS",
    "PreferencePair",
    "RewardData",
    "RewardHead",
    "RewardModel",
    "RewardModelError",
    "RewardModelInfo",
    "RewardTrainOptions",
    "ScoredResponse",
    "TrainRewardConfig",
    "TrainResult",
    "Normalization",
    "corrupt",
    "fit_normalization",
    "load_reward_model",
    "load_train_reward_config",
    "make_preference_pairs",
    "normalize_on_policy",
    "normalize_on_responses",
    "read_reward_data",
    "read_reward_model_info",
    "resolve_reference",
    "run_train_reward",
    "sample_token_ids",
    "save_reward_model",
    "text_token_ids",
    "tokenizers_compatible",
    "train_reward_model",
    "write_jsonl",
]


class RewardModelError(UserError):
    """A reward model directory is missing, incomplete or does not fit its backbone."""


# ---- the model -----------------------------------------------------------------------------------------


class RewardHead(nn.Module):
    """r = W2 · tanh(W1 · h + b1) + b2 on the final hidden state h [..., d] → [...].

    Weights start from N(0, 1/sqrt(d_in + 1)) (d_in: the layer's input width), biases from 0.
    """

    def __init__(self, hidden_size: int, head_hidden: Optional[int] = None):
        super().__init__()
        inner = head_hidden or hidden_size
        self.dense = nn.Linear(hidden_size, inner)
        self.out = nn.Linear(inner, 1)
        for layer in (self.dense, self.out):
            nn.init.normal_(layer.weight, mean=0.0, std=1.0 / math.sqrt(layer.in_features + 1))
            nn.init.zeros_(layer.bias)

    @property
    def hidden_size(self) -> int:
        return self.dense.in_features

    @property
    def head_hidden(self) -> int:
        return self.dense.out_features

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.dense(hidden))).squeeze(-1)


def right_pad(rows: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of token ids → input_ids and attention_mask [B, T], padded on the right."""
    width = max(1, max((len(row) for row in rows), default=1))
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            input_ids[i, : len(row)] = torch.tensor(list(row), dtype=torch.long)
            attention_mask[i, : len(row)] = 1
    return input_ids, attention_mask


def max_positions_of(backbone: nn.Module) -> Optional[int]:
    config = getattr(backbone, "config", None)
    for attribute in ("n_positions", "max_position_embeddings"):
        value = getattr(config, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


class RewardModel(nn.Module):
    """A backbone (transformers ``AutoModel``, no LM head) and a :class:`RewardHead`.

    ``forward`` gives the raw reward; :meth:`score` applies the stored normalisation ``gain·raw + bias``.
    ``backbone`` may be ``None`` for a head that only reads hidden states handed to it (:meth:`score_hidden`).
    """

    def __init__(self, backbone: Optional[nn.Module], head: RewardHead, tokenizer: Any = None,
                 gain: float = 1.0, bias: float = 0.0, backbone_path: Optional[str] = None,
                 tokenizer_path: Optional[str] = None, backbone_frozen: bool = True,
                 trust_remote_code: bool = False):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.tokenizer = tokenizer
        self.gain = float(gain)
        self.bias = float(bias)
        #: where the backbone came from (a checkpoint path or hub id); with a frozen backbone this is what
        #: the saved directory points at, and what decides whether the engine's reference states can be read
        self.backbone_path = backbone_path
        self.tokenizer_path = tokenizer_path
        self.backbone_frozen = backbone_frozen
        self.trust_remote_code = trust_remote_code
        self.normalization: Optional[dict[str, Any]] = None
        self.training_info: dict[str, Any] = {}

    @property
    def device(self) -> torch.device:
        return next(self.head.parameters()).device

    @property
    def hidden_size(self) -> int:
        return self.head.hidden_size

    @property
    def max_length(self) -> Optional[int]:
        return max_positions_of(self.backbone) if self.backbone is not None else None

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The backbone's final hidden state at each row's last real token [B, d] (left or right padding)."""
        if self.backbone is None:
            raise RewardModelError("this reward model was loaded without its backbone; it can only score "
                                   "hidden states (score_hidden)")
        attention_mask = attention_mask.long()
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                            position_ids=position_ids_from_mask(attention_mask), use_cache=False)
        states = out.last_hidden_state
        rows = torch.arange(states.size(0), device=states.device)
        return states[rows, last_token_index(attention_mask)]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Raw rewards [B]."""
        return self.head(self.hidden(input_ids, attention_mask))

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        return raw * self.gain + self.bias

    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Rewards [B] read at each row's last real token; ``gain·raw + bias`` unless ``normalize=False``."""
        raw = self(input_ids, attention_mask)
        return self.normalize(raw) if normalize else raw

    def score_hidden(self, hidden: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Rewards [B] from final hidden states [B, d] of this model's backbone (no forward of its own)."""
        raw = self.head(hidden.to(self.device, torch.float32))
        return self.normalize(raw) if normalize else raw

    @torch.no_grad()
    def score_ids(self, rows: Sequence[Sequence[int]], batch_size: int = 32, normalize: bool = True) -> torch.Tensor:
        """Score token sequences in right-padded batches of ``batch_size``; returns a CPU float tensor [N]."""
        if not rows:
            return torch.zeros(0)
        pad = _pad_id(self.tokenizer)
        limit = self.max_length
        out = []
        for start in range(0, len(rows), batch_size):
            chunk = [_fit(row, limit) for row in rows[start:start + batch_size]]
            input_ids, attention_mask = right_pad(chunk, pad)
            out.append(self.score(input_ids.to(self.device), attention_mask.to(self.device), normalize).float().cpu())
        return torch.cat(out)

    def score_samples(self, samples: Sequence[Sample], batch_size: int = 32, normalize: bool = True,
                      same_vocab: bool = True) -> torch.Tensor:
        """Score engine samples (see :func:`sample_token_ids`)."""
        rows = [sample_token_ids(self.tokenizer, sample, same_vocab=same_vocab) for sample in samples]
        return self.score_ids(rows, batch_size, normalize)


def _pad_id(tokenizer: Any) -> int:
    if tokenizer is None:
        return 0
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _fit(row: Sequence[int], limit: Optional[int]) -> list[int]:
    """Keep the last ``limit`` tokens: the score is read at the end."""
    row = list(row)
    return row[-limit:] if limit is not None and len(row) > limit else row


# ---- token sequences, exactly as the engine builds them ---------------------------------------------------


def text_token_ids(tokenizer: Any, prompt: str, response: str, append_eos: bool = True) -> list[int]:
    """``tokenizer(prompt)`` (with its special tokens) + the response's tokens (without) + eos."""
    ids = list(tokenizer(prompt)["input_ids"]) + list(tokenizer(response, add_special_tokens=False)["input_ids"])
    if append_eos:
        ids.append(tokenizer.eos_token_id)
    return ids


def sample_token_ids(tokenizer: Any, sample: Sample, same_vocab: bool = True) -> list[int]:
    """The sequence the engine ran for ``sample``: prompt ids, ``sample.response_ids``, and eos when the
    response stopped at one (``Sample.response_ids`` excludes it).

    The prompt ids are ``sample.prompt_ids`` when the sample carries them, else ``tokenizer(sample.prompt)``.
    With ``same_vocab=False`` (the run's tokenizer differs from the reward model's) the response is
    re-tokenized from its text instead.
    """
    prompt_ids = getattr(sample, "prompt_ids", None) if same_vocab else None
    ids = list(prompt_ids) if prompt_ids is not None else list(tokenizer(sample.prompt)["input_ids"])
    if same_vocab:
        ids += list(sample.response_ids)
    else:
        ids += list(tokenizer(sample.response, add_special_tokens=False)["input_ids"])
    if sample.stop_reason == "eos":
        ids.append(tokenizer.eos_token_id)
    return ids


def tokenizers_compatible(a: Any, b: Any) -> bool:
    """Same vocabulary and the same eos: token ids of one mean the same to the other."""
    if a is None or b is None:
        return True
    if a is b:
        return True
    return a.eos_token_id == b.eos_token_id and a.get_vocab() == b.get_vocab()


# ---- data ------------------------------------------------------------------------------------------------


class PreferencePair(BaseModel):
    """One comparison: ``chosen`` is the better response to ``prompt``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str
    chosen: str
    rejected: str


class ScoredResponse(BaseModel):
    """One response with a scalar label (higher is better)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str
    response: str
    score: float = Field(allow_inf_nan=False)


@dataclass
class RewardData:
    """Pairs or labels, with where they came from (for messages)."""

    kind: DataKind
    items: list  # list[PreferencePair] or list[ScoredResponse]
    source: str = "data"

    def __len__(self) -> int:
        return len(self.items)

    @property
    def prompts(self) -> list[str]:
        """The distinct prompts, in first-seen order."""
        return list(dict.fromkeys(item.prompt for item in self.items))

    @property
    def responses(self) -> list[tuple[str, str]]:
        """(prompt, response) of the preferred / labelled responses."""
        if self.kind == "pairs":
            return [(item.prompt, item.chosen) for item in self.items]
        return [(item.prompt, item.response) for item in self.items]

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]], kind: Union[DataKind, Literal["auto"]] = "auto",
                  source: str = "data") -> "RewardData":
        """Validate in-memory rows (dicts or models); errors name ``source`` and the row number (from 1)."""
        items: list = []
        for number, row in enumerate(rows, start=1):
            if isinstance(row, (PreferencePair, ScoredResponse)):
                row = row.model_dump()
            if kind == "auto":
                kind = _detect_kind(row, f"{source}, row {number}")
            items.append(_validate_row(row, kind, f"{source}, row {number}"))
        if not items:
            raise DataError(f"{source}: no records")
        return cls(kind, items, source)  # type: ignore[arg-type]


_MODELS: dict[str, type[BaseModel]] = {"pairs": PreferencePair, "labels": ScoredResponse}


def _detect_kind(row: Any, where: str) -> DataKind:
    if isinstance(row, Mapping):
        if "chosen" in row or "rejected" in row:
            return "pairs"
        if "response" in row or "score" in row:
            return "labels"
    raise DataError(f"{where}: cannot tell preference pairs {{prompt, chosen, rejected}} from scalar labels "
                    f"{{prompt, response, score}} (keys: {', '.join(sorted(row)) if isinstance(row, Mapping) else type(row).__name__})")


def _check_same_kind(row: Mapping[str, Any], kind: DataKind, where: str, first: int) -> None:
    try:
        own = _detect_kind(row, where)
    except DataError:
        return  # neither kind: validation names the missing fields
    if own != kind:
        names = {"pairs": "a preference pair", "labels": "a scalar label"}
        raise DataError(f"{where}: {names[own]} in a file of {kind} (line {first} decided the kind; "
                        f"keep pairs and labels in separate files)")


def _validate_row(row: Any, kind: DataKind, where: str):
    try:
        return _MODELS[kind].model_validate(row)
    except ValidationError as error:
        raise DataError(f"{where}: {format_validation_error(error)}") from None


def read_reward_data(path: Union[str, Path], kind: Union[DataKind, Literal["auto"]] = "auto") -> RewardData:
    """Read pairs or labels from a JSONL file. ``kind="auto"`` decides from the first record's keys.

    Blank lines are skipped (line numbers stay physical); every problem raises :class:`DataError` naming the
    file, the line and the field.
    """
    path = Path(path)
    try:
        handle = open(path, encoding="utf-8-sig")
    except OSError as error:
        raise DataError(f"{path}: cannot read reward data: {error.strerror or error}") from None
    items: list = []
    detected_at: Optional[int] = None
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{where}: not valid JSON: {error.msg} (column {error.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
            if kind == "auto":
                kind, detected_at = _detect_kind(row, where), number
            elif detected_at is not None:
                _check_same_kind(row, kind, where, detected_at)
            items.append(_validate_row(row, kind, where))
    if not items:
        raise DataError(f"{path}: no records")
    return RewardData(kind, items, str(path))  # type: ignore[arg-type]


def write_jsonl(path: Union[str, Path], rows: Iterable[Union[Mapping[str, Any], BaseModel]]) -> Path:
    """Write rows as JSONL, atomically (a temporary sibling file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".partial-{path.name}-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as stream:
            for row in rows:
                data = row.model_dump() if isinstance(row, BaseModel) else dict(row)
                stream.write(json.dumps(data, ensure_ascii=False) + "\n")
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


# ---- preference pairs from a task dataset ----------------------------------------------------------------


def corrupt(text: str, rng: random.Random, kinds: Sequence[str] = CORRUPTIONS,
            alphabet: str = string.ascii_lowercase, avoid: Iterable[str] = ()) -> Optional[str]:
    """A near miss of ``text``: one character substituted, one deleted, or the characters shuffled.

    The kind is drawn from ``kinds``; a kind that cannot change this text (a one-letter word cannot be
    shuffled, an empty one cannot lose a letter) is dropped and another drawn. The result is never ``text``,
    never empty, and never one of ``avoid``; ``None`` when no kind can make one.
    """
    unknown = sorted(set(kinds) - set(CORRUPTIONS))
    if unknown:
        raise ValueError(f"unknown corruption(s) {', '.join(unknown)}; known: {', '.join(CORRUPTIONS)}")
    banned = {text, ""} | set(avoid)
    left = list(dict.fromkeys(kinds))
    while left:
        kind = rng.choice(left)
        for _attempt in range(20):
            candidate = _corrupt_once(text, kind, rng, alphabet)
            if candidate is not None and candidate not in banned:
                return candidate
        left.remove(kind)
    return None


def _corrupt_once(text: str, kind: str, rng: random.Random, alphabet: str) -> Optional[str]:
    if not text:
        return None
    if kind == "substitute":
        index = rng.randrange(len(text))
        choices = [c for c in alphabet if c != text[index]]
        if not choices:
            return None
        return text[:index] + rng.choice(choices) + text[index + 1:]
    if kind == "delete":
        if len(text) < 2:
            return None
        index = rng.randrange(len(text))
        return text[:index] + text[index + 1:]
    if kind == "shuffle":
        if len(set(text)) < 2:
            return None
        letters = list(text)
        rng.shuffle(letters)
        return "".join(letters)
    raise ValueError(f"unknown corruption {kind!r}")


def make_preference_pairs(records: Iterable[Union[Record, Mapping[str, Any]]], rng: Union[random.Random, int],
                          corruptions: Sequence[str] = CORRUPTIONS, pairs_per_record: int = 1,
                          render: Optional[Callable[[Record], str]] = None,
                          alphabet: str = string.ascii_lowercase) -> list[PreferencePair]:
    """Pairs ``chosen`` = the record's (first) solution, ``rejected`` = a corrupted copy of it.

    ``rng`` is a ``random.Random`` or a seed (the same seed gives the same pairs). ``render`` turns a record
    into prompt text (default: :attr:`Record.prompt_text`, what the engine uses without a chat template).
    A record without a solution, or with one no corruption can change, raises :class:`DataError`.
    """
    if pairs_per_record < 1:
        raise ValueError(f"pairs_per_record must be at least 1, got {pairs_per_record}")
    if not corruptions:
        raise ValueError("corruptions must name at least one of " + ", ".join(CORRUPTIONS))
    rng = rng if isinstance(rng, random.Random) else random.Random(rng)
    render = render or (lambda record: record.prompt_text)
    pairs: list[PreferencePair] = []
    for index, record in enumerate(records):
        if not isinstance(record, Record):
            try:
                record = Record.from_dict(record)
            except ValidationError as error:
                raise DataError(f"record {index}: {format_validation_error(error)}") from None
        prompt = render(record)
        if not record.solutions:
            raise DataError(f"record {index} (prompt {prompt[:60]!r}) has no solution to make a preference pair from")
        chosen = record.solutions[0]
        for _ in range(pairs_per_record):
            rejected = corrupt(chosen, rng, corruptions, alphabet, avoid=record.solutions)
            if rejected is None:
                raise DataError(f"record {index} (prompt {prompt[:60]!r}): no corruption in "
                                f"{', '.join(corruptions)} can change its solution {chosen!r}")
            pairs.append(PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected))
    if not pairs:
        raise DataError("no records to make preference pairs from")
    return pairs


# ---- training --------------------------------------------------------------------------------------------


class RewardTrainOptions(BaseModel):
    """How a reward model is trained (the ``train:`` section of a train-reward config)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    train_backbone: bool = Field(False, description="Train the backbone too; false trains the head on the frozen "
                                 "backbone (whose features are then computed once), which lets the PPO engine "
                                 "score with zero extra forward when the policy starts from the same checkpoint.")
    epochs: int = Field(20, gt=0, description="Passes over the training data.")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate of the head.")
    backbone_lr: Optional[float] = Field(None, gt=0, description="Learning rate of the backbone (train_backbone); "
                                         "defaults to `lr`.")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: Optional[float] = Field(1.0, gt=0, description="Clip the global gradient norm; unset: no clip.")
    batch_size: int = Field(32, gt=0, description="Pairs (or labelled responses) per optimizer step.")
    held_out_fraction: float = Field(0.1, ge=0, lt=1, description="Share of the data held out for evaluation.")
    seed: int = Field(0, description="Seeds the head's initialisation, the held-out split and the shuffling.")
    head_hidden: Optional[int] = Field(None, gt=0, description="Width of the head's hidden layer; defaults to "
                                       "the backbone's hidden size.")
    append_eos: bool = Field(True, description="End each training response with eos, as the policy's responses "
                                "that stop at eos end (the score is read there).")


@dataclass
class TrainResult:
    model: RewardModel
    metrics: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)


def build_reward_model(backbone_path: str, tokenizer_path: Optional[str] = None, *, head_hidden: Optional[int] = None,
                       seed: int = 0, trust_remote_code: bool = False, device: Union[str, torch.device] = "cpu",
                       frozen: bool = True) -> RewardModel:
    """A fresh reward model: the checkpoint's backbone and a newly initialised head (seeded)."""
    from .models import disable_dropout, hidden_size_of, load_backbone, load_tokenizer

    tokenizer_path = tokenizer_path or backbone_path
    tokenizer = load_tokenizer(tokenizer_path, trust_remote_code)
    backbone = load_backbone(backbone_path, trust_remote_code, tokenizer)
    disable_dropout(backbone)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = RewardHead(hidden_size_of(backbone), head_hidden)
    model = RewardModel(backbone, head, tokenizer, backbone_path=resolve_reference(backbone_path),
                        tokenizer_path=resolve_reference(tokenizer_path), backbone_frozen=frozen,
                        trust_remote_code=trust_remote_code)
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
                               frozen=not options.train_backbone)
    tokenizer = model.tokenizer
    limit = model.max_length
    if data.kind == "pairs":
        rows = [(_fit(text_token_ids(tokenizer, p.prompt, p.chosen, options.append_eos), limit),
                 _fit(text_token_ids(tokenizer, p.prompt, p.rejected, options.append_eos), limit)) for p in data.items]
        targets = torch.zeros(len(rows))
    else:
        rows = [(_fit(text_token_ids(tokenizer, s.prompt, s.response, options.append_eos), limit),) for s in data.items]
        targets = torch.tensor([s.score for s in data.items], dtype=torch.float32)

    generator = torch.Generator().manual_seed(options.seed)
    held_out, train = _split([item.prompt for item in data.items], options.held_out_fraction, generator)

    trainer = _FrozenTrainer(model, rows, options) if not options.train_backbone else _FullTrainer(model, rows, options)
    trainer.fit(train, targets, data.kind, generator, progress)
    model.eval()
    metrics: dict[str, Any] = {"kind": data.kind, "train_size": len(train), "held_out_size": len(held_out)}
    for split, indices in (("train", train), ("held_out", held_out)):
        metrics.update({f"{split}_{k}": v for k, v in _evaluate(trainer.rewards(indices), targets[indices],
                                                                 data.kind).items()})
    model.training_info = {"options": options.model_dump(mode="json"), "data": data.source, "metrics": metrics}
    return TrainResult(model, metrics, trainer.history)


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
        options = self.options
        optimizer = torch.optim.AdamW(self.parameters(), lr=options.lr, weight_decay=options.weight_decay)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if not train:
            return
        for epoch in range(1, options.epochs + 1):
            self.model.train()
            permutation = torch.randperm(len(train), generator=generator).tolist()
            total = correct = 0.0
            for start in range(0, len(train), options.batch_size):
                batch = [train[i] for i in permutation[start:start + options.batch_size]]
                rewards = self.rewards(batch, grad=True)
                loss = _loss(rewards, targets[batch], kind)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if options.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, options.max_grad_norm)
                optimizer.step()
                total += float(loss.detach()) * len(batch)
                if kind == "pairs":
                    correct += _ranked_right(rewards[:, 0].detach() - rewards[:, 1].detach()) * len(batch)
            entry = {"epoch": float(epoch), "loss": total / len(train)}
            if kind == "pairs":
                entry["accuracy"] = correct / len(train)
            self.history.append(entry)
            if progress is not None:
                progress(entry)


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
        return super().parameters() + [{"params": list(self.model.backbone.parameters()),
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


# ---- normalisation ---------------------------------------------------------------------------------------


@dataclass
class Normalization:
    """gain·raw + bias has mean 0 and std 1 (population) on the ``count`` scored responses."""

    gain: float
    bias: float
    raw_mean: float
    raw_std: float
    count: int
    source: str
    samples: list[Sample] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {"gain": self.gain, "bias": self.bias, "raw_mean": self.raw_mean, "raw_std": self.raw_std,
                "count": self.count, "source": self.source}


def fit_normalization(raw: torch.Tensor) -> tuple[float, float, float, float]:
    """(gain, bias, mean, std) with gain = 1/std and bias = −mean/std (std over all values, in float64)."""
    values = raw.detach().double().flatten()
    if values.numel() < 2:
        raise UserError(f"normalisation needs at least 2 scored responses, got {values.numel()}")
    mean = float(values.mean())
    std = float(values.std(unbiased=False))
    if not math.isfinite(std) or std < 1e-12:
        raise UserError(f"normalisation: the {values.numel()} responses all score {mean:.6g} (std {std:.3g}); "
                        f"cannot scale them to std 1 (score more or more varied responses)")
    return 1.0 / std, -mean / std, mean, std


def _apply_normalization(model: RewardModel, raw: torch.Tensor, source: str, samples: list[Sample]) -> Normalization:
    gain, bias, mean, std = fit_normalization(raw)
    model.gain, model.bias = gain, bias
    result = Normalization(gain, bias, mean, std, int(raw.numel()), source, samples)
    model.normalization = result.as_dict()
    return result


def normalize_on_responses(model: RewardModel, prompts: Sequence[str], responses: Sequence[str],
                           append_eos: bool = True, batch_size: int = 32) -> Normalization:
    """Fit gain and bias on given (prompt, response) texts, and store them on ``model``."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    tokenizer = model.tokenizer
    samples = [Sample(prompt=p, response=r, response_ids=tuple(tokenizer(r, add_special_tokens=False)["input_ids"]),
                      solution=None, stop_reason="eos" if append_eos else "length")
               for p, r in zip(prompts, responses)]
    raw = model.score_samples(samples, batch_size, normalize=False)
    return _apply_normalization(model, raw, "given responses", samples)


def choose_prompts(prompts: Sequence[str], count: int, seed: int) -> list[str]:
    """``count`` prompts drawn without replacement (in passes when there are fewer), seeded."""
    if not prompts:
        raise UserError("normalisation: no prompts to sample responses for")
    rng = random.Random(seed)
    chosen: list[str] = []
    while len(chosen) < count:
        chosen += rng.sample(list(prompts), min(len(prompts), count - len(chosen)))
    return chosen


@torch.no_grad()
def sample_policy_responses(policy_path: str, prompts: Sequence[str], *, max_new_tokens: int = 32,
                            temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                            batch_size: int = 32, tokenizer_path: Optional[str] = None,
                            trust_remote_code: bool = False, device: Union[str, torch.device] = "cpu"
                            ) -> tuple[list[Sample], Any]:
    """Sample one response per prompt from a policy checkpoint, as the engine does; returns samples (as the
    engine makes them: response ids without eos, stop reason) and the policy's tokenizer."""
    from .data import left_pad
    from .models import disable_dropout, load_causal_lm, load_tokenizer
    from .ppo.rollout import sample_responses

    tokenizer = load_tokenizer(tokenizer_path or policy_path, trust_remote_code)
    policy = load_causal_lm(policy_path, trust_remote_code, tokenizer).to(device)
    policy.eval()
    disable_dropout(policy)
    generator = torch.Generator(device=torch.device(device)).manual_seed(seed)
    samples: list[Sample] = []
    for start in range(0, len(prompts), batch_size):
        texts = list(prompts[start:start + batch_size])
        input_ids, attention_mask = left_pad([tokenizer(text)["input_ids"] for text in texts], tokenizer.pad_token_id)
        responses = sample_responses(policy, input_ids.to(device), attention_mask.to(device), max_new_tokens,
                                     tokenizer.eos_token_id, tokenizer.pad_token_id, generator, temperature,
                                     top_k, top_p)
        lengths = responses.mask.sum(1).tolist()
        for text, row, n, stopped in zip(texts, responses.tokens.tolist(), lengths, responses.stopped_by_eos.tolist()):
            kept = row[: int(n) - (1 if stopped else 0)]
            samples.append(Sample(prompt=text, response=tokenizer.decode(kept, skip_special_tokens=True),
                                  response_ids=tuple(kept), solution=None, stop_reason="eos" if stopped else "length"))
    return samples, tokenizer


def normalize_on_policy(model: RewardModel, policy_path: str, prompts: Sequence[str], *, num_prompts: int = 64,
                        max_new_tokens: int = 32, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                        seed: int = 0, batch_size: int = 32, tokenizer_path: Optional[str] = None,
                        trust_remote_code: bool = False) -> Normalization:
    """Sample responses of the starting policy to ``num_prompts`` of ``prompts`` (seeded), score them raw, and
    store gain and bias so that their normalised scores have mean 0 and std 1."""
    chosen = choose_prompts(prompts, num_prompts, seed)
    samples, policy_tokenizer = sample_policy_responses(
        policy_path, chosen, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
        seed=seed, batch_size=batch_size, tokenizer_path=tokenizer_path, trust_remote_code=trust_remote_code,
        device=model.device)
    same_vocab = tokenizers_compatible(policy_tokenizer, model.tokenizer)
    raw = model.score_samples(samples, batch_size, normalize=False, same_vocab=same_vocab)
    return _apply_normalization(model, raw, f"policy {resolve_reference(policy_path)}", samples)


# ---- the saved directory ---------------------------------------------------------------------------------


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

    from .checkpoint import write_atomically

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
                           head_hidden=model.head.head_hidden, gain=model.gain, bias=model.bias,
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


def load_reward_head(directory: Union[str, Path], info: Optional[RewardModelInfo] = None) -> RewardHead:
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
    head = RewardHead(info.hidden_size, info.head_hidden)
    try:
        head.load_state_dict(state)
    except RuntimeError as error:
        raise RewardModelError(f"{path}: the weights do not fit a head of hidden size {info.hidden_size} and "
                               f"width {info.head_hidden} ({REWARD_MODEL_FILE}): {' '.join(str(error).split())}") from None
    return head


def load_reward_model(directory: Union[str, Path], device: Union[str, torch.device] = "cpu",
                      with_backbone: bool = True) -> RewardModel:
    """Load a saved reward model (the backbone in eval mode, dropout off, frozen).

    ``with_backbone=False`` loads the head and tokenizer only, for :meth:`RewardModel.score_hidden`.
    """
    from .models import disable_dropout, hidden_size_of, load_backbone, load_tokenizer

    directory = Path(directory)
    info = read_reward_model_info(directory)
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
                        trust_remote_code=info.trust_remote_code)
    model.normalization = info.normalization
    model.training_info = info.training
    model.requires_grad_(False)
    return model.eval().to(device)


# ---- `ppo-core train-reward CONFIG` ----------------------------------------------------------------------


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
                                          description="How a rejected response is made from the solution.")
    pairs_per_record: int = Field(1, gt=0)
    seed: int = Field(0, description="Seeds the corruptions.")
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
    max_new_tokens: int = Field(32, gt=0, description="As the PPO run's generation.max_new_tokens.")
    temperature: float = Field(1.0, gt=0, description="As the PPO run's generation.temperature.")
    top_k: int = Field(0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int = 0
    batch_size: int = Field(32, gt=0)


class TrainRewardConfig(Section):
    """The config of ``ppo-core train-reward``."""

    model: RewardModelSection
    data: RewardDataSection
    train: RewardTrainOptions = Field(default_factory=RewardTrainOptions)
    normalization: NormalizationSection = Field(default_factory=NormalizationSection)
    output_dir: str = Field("runs/reward-model", description="The reward model directory to write.")
    threads: Optional[int] = Field(None, gt=0, description="torch CPU threads; unset leaves torch's default.")
    plugins: PluginsConfig = Field(default_factory=PluginsConfig, description="Which plugins load (to find "
                                   "`data.dataset`), as in a run config.")


def load_train_reward_config(path: Union[str, Path], overrides: Sequence[str] = ()) -> TrainRewardConfig:
    """Read a YAML/JSON train-reward config, apply ``--set`` overrides, validate (ConfigError names the field)."""
    from .config import apply_override, read_config_file

    data = read_config_file(path)
    for assignment in overrides:
        apply_override(data, assignment)
    source = str(path) + (" (with --set " + ", ".join(overrides) + ")" if overrides else "")
    try:
        return TrainRewardConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"{source}: {format_validation_error(error)}") from None


@dataclass
class TrainRewardOutcome:
    path: Path
    result: TrainResult
    normalization: Optional[Normalization]
    data: RewardData


def load_config_data(config: TrainRewardConfig, tokenizer: Any = None, source: str = "config") -> RewardData:
    """The config's pairs or labels: read from ``data.path``, or made from ``data.dataset``'s records."""
    data = config.data
    if data.path is not None:
        return read_reward_data(data.path, data.format)
    from .api import RunContext
    from .data import render_prompt
    from .plugins import load_plugins

    plugins = load_plugins(config.plugins.allow, config.plugins.block)
    context = RunContext(seed=config.train.seed, tokenizer=tokenizer, policy_path=config.model.path)
    dataset = plugins.registry.build("dataset", data.dataset, data.options, context, where=f"{source}: data.options",
                                     name_where=f"{source}: data.dataset")
    records = list(dataset.records(data.split))

    def render(record: Record) -> str:
        return render_prompt(record, tokenizer, data.chat_template) if tokenizer is not None else record.prompt_text

    pairs = make_preference_pairs(records, random.Random(data.seed), data.corruptions, data.pairs_per_record, render)
    if data.save_pairs:
        write_jsonl(data.save_pairs, pairs)
    return RewardData("pairs", pairs, f"dataset {data.dataset} ({data.split} split)")


def run_train_reward(config: TrainRewardConfig, overwrite: bool = False, source: str = "config",
                     progress: Optional[Callable[[dict[str, float]], None]] = None) -> TrainRewardOutcome:
    """Train, normalise and save as ``config`` says; returns where it saved and the metrics."""
    from .models import load_tokenizer, resolve_device

    if config.threads:
        torch.set_num_threads(config.threads)
    output = Path(config.output_dir)
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not overwrite:
        raise UserError(f"output_dir: {output} already exists; pass --overwrite to replace it")
    device = resolve_device(config.model.device)
    tokenizer_path = config.model.tokenizer or config.model.path
    tokenizer = load_tokenizer(tokenizer_path, config.model.trust_remote_code,
                               field="model.tokenizer" if config.model.tokenizer else "model.path")
    data = load_config_data(config, tokenizer, source)
    result = train_reward_model(config.model.path, data, config.train, tokenizer_path=tokenizer_path, device=device,
                                trust_remote_code=config.model.trust_remote_code, progress=progress)
    normalization = None
    norm = config.normalization
    if norm.enabled:
        if norm.source == "policy":
            policy = norm.policy or config.model.path
            normalization = normalize_on_policy(
                result.model, policy, data.prompts, num_prompts=norm.prompts, max_new_tokens=norm.max_new_tokens,
                temperature=norm.temperature, top_k=norm.top_k, top_p=norm.top_p, seed=norm.seed,
                batch_size=norm.batch_size, trust_remote_code=config.model.trust_remote_code)
        else:
            prompts, responses = zip(*data.responses)
            normalization = normalize_on_responses(result.model, prompts, responses, config.train.append_eos,
                                                   norm.batch_size)
    path = save_reward_model(result.model, output)
    return TrainRewardOutcome(path, result, normalization, data)
