"""Tiny, locally built models for tests and benchmarks (nothing is downloaded).

Everything here reproduces the TRL baseline's ``make_tiny_models.py`` so that ppo-core runs exactly the same
workload as the baseline:

* :func:`build_char_tokenizer` -- character-level ``PreTrainedTokenizerFast`` with the same token ids:
  ``<pad>``=0, ``<bos>``=1, ``<eos>``=2, ``<unk>``=3, then one token per printable ASCII character
  0x20..0x7E (``" "``=4, ..., ``"~"``=98), so ``len(tokenizer) == 99``. ``<bos>`` is prepended on encode
  by the post-processor, decode joins characters without spaces, ``padding_side="left"``, no chat template.
* :data:`MODEL_SIZES` -- GPT-2 configs (``small``/``medium`` match the baseline; ``tiny`` is for fast tests).
* :func:`build_tiny_model` -- random-init ``GPT2LMHeadModel`` under a fixed seed. With the same seed it gives
  the same weights as the baseline's policy (for ``small``/seed 0 the safetensors file is byte-identical,
  sha256 ``8bae9d54...``).
* :func:`init_model` -- writes tokenizer + model (+ generation config) into ONE directory, atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..runtime.rundir import check_replaceable

if TYPE_CHECKING:  # pragma: no cover
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

__all__ = [
    "SPECIAL_TOKENS",
    "PAD_ID",
    "BOS_ID",
    "EOS_ID",
    "UNK_ID",
    "MODEL_SIZES",
    "build_char_tokenizer",
    "build_tiny_model",
    "init_model",
]

#: Special tokens, in id order (ids 0..3). ``<unk>`` exists only because WordLevel needs one.
SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<unk>")
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3

#: The character vocabulary: printable ASCII, space included (95 tokens, ids 4..98).
_CHARS: tuple[str, ...] = tuple(chr(i) for i in range(0x20, 0x7F))

#: GPT-2 config kwargs per model size. ``small``/``medium`` are the TRL baseline's sizes.
MODEL_SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(n_layer=2, n_head=2, n_embd=64, n_positions=128),
    "small": dict(n_layer=4, n_head=4, n_embd=256, n_positions=128),
    "medium": dict(n_layer=6, n_head=8, n_embd=512, n_positions=128),
}

_DEFAULT_MAX_LENGTH = 128


def build_char_tokenizer(model_max_length: int = _DEFAULT_MAX_LENGTH) -> "PreTrainedTokenizerFast":
    """Character-level tokenizer with the TRL baseline's ids (see module docstring)."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
    )
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + _CHARS)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # Every single character (spaces included) becomes its own piece.
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    # Concatenate pieces on decode (WordLevel would otherwise join them with spaces).
    tk.decoder = decoders.Fuse()
    tk.post_processor = processors.TemplateProcessing(
        single="<bos> $A",
        pair="<bos> $A $B",
        special_tokens=[("<bos>", vocab["<bos>"])],
    )
    tk.add_special_tokens(list(SPECIAL_TOKENS))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        padding_side="left",
        truncation_side="left",
        model_max_length=model_max_length,
    )
    ids = (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id)
    if ids != (PAD_ID, BOS_ID, EOS_ID, UNK_ID) or len(tok) != len(vocab):
        raise RuntimeError(f"char tokenizer built with unexpected ids {ids} / size {len(tok)}")
    return tok


def _size_kwargs(size: str, n_positions: int | None) -> dict[str, int]:
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}; known sizes: {', '.join(MODEL_SIZES)}")
    kw = dict(MODEL_SIZES[size])
    if n_positions is not None:
        if int(n_positions) <= 0:
            raise ValueError(f"n_positions must be positive, got {n_positions}")
        kw["n_positions"] = int(n_positions)
    return kw


def build_tiny_model(
    size: str = "small",
    seed: int = 0,
    n_positions: int | None = None,
    *,
    tokenizer: "PreTrainedTokenizerFast | None" = None,
) -> "GPT2LMHeadModel":
    """Randomly initialised float32 ``GPT2LMHeadModel`` of ``MODEL_SIZES[size]``.

    Initialised under ``torch.manual_seed(seed)`` (the same way as the baseline's policy, so the weights are
    identical for the same seed); the caller's global RNG state is restored afterwards.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    kw = _size_kwargs(size, n_positions)
    tok = tokenizer if tokenizer is not None else build_char_tokenizer()
    cfg = GPT2Config(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        num_labels=1,  # as in the baseline (only matters if the config is reused for a value/reward head)
        **kw,
    )
    prev_dtype = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            torch.set_default_dtype(torch.float32)
            model = GPT2LMHeadModel(cfg)
        finally:
            torch.set_default_dtype(prev_dtype)
    model = model.to(torch.float32)
    model.config.pad_token_id = tok.pad_token_id
    gc = model.generation_config
    gc.bos_token_id, gc.eos_token_id, gc.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    return model


def _fix_tokenizer_class(directory: Path) -> None:
    # transformers 5.x writes "TokenizersBackend", which 4.x cannot resolve; "PreTrainedTokenizerFast" is
    # an alias of the same class in 5.x and exists in 4.x, so the tokenizer loads under both.
    tc_path = directory / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text())
    tc["tokenizer_class"] = "PreTrainedTokenizerFast"
    tc_path.write_text(json.dumps(tc, indent=2))
    # transformers 4.x also writes special_tokens_map.json, a repeat of the special tokens tokenizer_config.json
    # holds; without it every release writes the same files.
    (directory / "special_tokens_map.json").unlink(missing_ok=True)


def _is_nonempty(path: Path) -> bool:
    if not os.path.lexists(path):
        return False
    if path.is_dir() and not path.is_symlink():
        return any(path.iterdir())
    return True  # a file or symlink is "something in the way"


def init_model(
    out_dir: str | os.PathLike[str],
    size: str = "small",
    seed: int = 0,
    n_positions: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a random tiny GPT-2 checkpoint (tokenizer + model + generation config) to ``out_dir``.

    ``AutoModelForCausalLM.from_pretrained(out_dir)`` and ``AutoTokenizer.from_pretrained(out_dir)`` both
    work on the result. Weights are saved as safetensors; the same ``seed`` gives byte-identical files.

    The checkpoint is written with ``ppo_core.runtime.checkpoints.write_atomically`` (a temporary sibling
    directory, fsynced, renamed into place), so a crash never leaves a half-written checkpoint at ``out_dir``.
    A non-empty existing ``out_dir`` raises ``FileExistsError`` unless ``overwrite=True``. Returns the absolute
    path of ``out_dir``.
    """
    out = Path(out_dir).expanduser().absolute()
    _size_kwargs(size, n_positions)  # validate before touching the filesystem
    if _is_nonempty(out) and not overwrite:
        raise FileExistsError(f"{out} already exists and is not empty (pass --overwrite to replace it)")
    if _is_nonempty(out):  # --overwrite never replaces the current directory, one of its ancestors, home or root
        check_replaceable(out, None, "init-model")

    from ..runtime.checkpoints import write_atomically

    kw = _size_kwargs(size, n_positions)
    tok = build_char_tokenizer(model_max_length=kw["n_positions"])
    model = build_tiny_model(size, seed=seed, n_positions=n_positions, tokenizer=tok)

    def write(tmp: Path) -> None:
        tok.save_pretrained(tmp)
        _fix_tokenizer_class(tmp)
        model.save_pretrained(tmp, safe_serialization=True)

    return write_atomically(out, write)
