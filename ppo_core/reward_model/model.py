"""The reward model: a backbone plus an MLP head read at the last real token (or on the mean over the real
tokens), and the token sequences it scores
(exactly the engine's: prompt ids, response ids, eos when the response stopped at one)."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import nn

from ..data.prompts import prompt_token_ids
from ..errors import UserError
from ..modeling.heads import MLPHead
from ..plugin.contract import Sample
from ..ppo.functional import last_token_index
from ..ppo.rollout import position_ids_from_mask


class RewardModelError(UserError):
    """A reward model directory is missing, incomplete or does not fit its backbone."""




#: what the head reads (:attr:`RewardModel.pool`)
POOLS = ("last", "mean", "sum")


def pool_hidden(states: torch.Tensor, attention_mask: torch.Tensor, pool: str) -> torch.Tensor:
    """Final hidden states [B, T, d] → [B, d]: each row's last real token (``last``) or the mean over its real
    tokens (``mean``); left or right padding alike."""
    if pool == "mean":
        mask = attention_mask.to(states.dtype).unsqueeze(-1)
        return (states * mask).sum(1) / mask.sum(1).clamp(min=1)
    rows = torch.arange(states.size(0), device=states.device)
    return states[rows, last_token_index(attention_mask)]


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
    """A backbone (transformers ``AutoModel``, no LM head) and a :class:`~ppo_core.modeling.heads.MLPHead`.

    ``forward`` gives the raw reward; :meth:`score` applies the stored normalisation ``gain·raw + bias``.
    ``backbone`` may be ``None`` for a head that only reads hidden states handed to it (:meth:`score_hidden`).
    """

    def __init__(self, backbone: Optional[nn.Module], head: MLPHead, tokenizer: Any = None,
                 gain: float = 1.0, bias: float = 0.0, backbone_path: Optional[str] = None,
                 tokenizer_path: Optional[str] = None, backbone_frozen: bool = True,
                 trust_remote_code: bool = False, pool: str = "last"):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
        #: ``last``: the head reads the last real token's final hidden state; ``mean``: their mean over real tokens
        self.pool = pool
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

    def states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The backbone's final hidden states [B, T, d] (position ids from the mask: left or right padding)."""
        if self.backbone is None:
            raise RewardModelError("this reward model was loaded without its backbone; it can only score "
                                   "hidden states (score_hidden)")
        attention_mask = attention_mask.long()
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                            position_ids=position_ids_from_mask(attention_mask), use_cache=False)
        return out.last_hidden_state

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The final hidden states pooled as :attr:`pool` says (``last`` or ``mean``) [B, d]."""
        if self.pool == "sum":
            raise RewardModelError("a reward model with pool: sum scores every token; it has no pooled hidden state")
        return pool_hidden(self.states(input_ids, attention_mask), attention_mask.long(), self.pool)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Raw rewards [B]; with ``pool: sum`` the head's score of every real token, summed (the prompt's tokens
        add the same to every response of a prompt: the model is causal)."""
        if self.pool == "sum":
            tokens = self.head(self.states(input_ids, attention_mask))
            return (tokens * attention_mask.to(tokens.dtype)).sum(1)
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




def text_token_ids(tokenizer: Any, prompt: str, response: str, append_eos: bool = True,
                   templated: bool = False) -> list[int]:
    """The prompt's ids as the engine tokenizes it (:func:`~ppo_core.data.prompts.prompt_token_ids`: the
    tokenizer's special tokens added unless the prompt is ``templated`` by its chat template, which writes its
    own) + the response's tokens (without special tokens) + eos."""
    ids = prompt_token_ids(prompt, tokenizer, templated)
    ids += tokenizer(response, add_special_tokens=False)["input_ids"]
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
    ids = list(prompt_ids) if prompt_ids is not None else prompt_token_ids(sample.prompt, tokenizer, templated=False)
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
