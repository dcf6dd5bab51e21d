"""Loading causal LMs, backbones and tokenizers by path or hub id; saving; the frozen reference copy."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Literal, Optional

import torch
from safetensors import SafetensorError
from torch import nn

from ..config import RunConfig
from ..errors import ConfigError, TrainingError, UserError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"model.device: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"model.device: {name!r} asked for, but CUDA is not available")
    if device.type in ("mps", "xpu") and not _backend_available(device.type):
        raise ConfigError(f"model.device: {name!r} asked for, but {device.type.upper()} is not available")
    if device.type == "meta":
        raise ConfigError(f"model.device: {name!r} holds no data; use `auto`, `cpu`, `cuda`...")
    if device.type != "cpu":
        try:  # one tiny allocation: each backend says 'not here' in its own way (mps, xpu, cuda:7 of one GPU)
            torch.empty(0, device=device)
        except Exception as error:  # noqa: BLE001 -- AssertionError, NotImplementedError, RuntimeError...
            raise ConfigError(f"model.device: {name!r} asked for, but this machine cannot use it "
                              f"({type(error).__name__}: {_first_line(error)[:120]})") from None
    return device


def _backend_available(device_type: str) -> bool:
    backend = torch.backends.mps if device_type == "mps" else getattr(torch, device_type)
    return bool(backend.is_available())


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
    from .lora import adapter_base, load_adapter_model

    base = adapter_base(Path(path)) if Path(path).is_dir() else None
    if base is not None:  # LoRA adapters saved by a PPO run: their base model with the adapters merged in
        return load_adapter_model(Path(path), load_causal_lm(base, trust_remote_code, tokenizer,
                                                             field=f"{field} (the adapters' base model)"))
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, SafetensorError) as error:  # a truncated weights file too
        raise UserError(f"{field}: cannot load a causal LM from {path!r}: {_first_line(error)}") from None
    if tokenizer is not None:
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer))
        model.config.pad_token_id = tokenizer.pad_token_id
        if model.generation_config is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
    check_listed_eos_ids(model, f"{field}: {path}/generation_config.json")
    return model


def check_listed_eos_ids(model: nn.Module, where: str) -> None:
    """Every eos id the generation config lists must be a token the model can sample: an id outside its vocabulary
    would never end a response, silently (and a text there is no id at all)."""
    listed = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if listed is None:
        return
    vocabulary = model.get_input_embeddings().num_embeddings
    for eos in [listed] if isinstance(listed, (int, str)) else listed:
        if isinstance(eos, bool) or not isinstance(eos, int) or not 0 <= eos < vocabulary:
            raise UserError(f"{where}: eos_token_id {listed!r}: {eos!r} is not a token id of the model's "
                            f"vocabulary (0 to {vocabulary - 1})")


def end_of_response_ids(tokenizer, model: Optional[nn.Module] = None) -> tuple[int, ...]:
    """The ids that end a sampled response: the tokenizer's eos and every eos id the model's generation config
    lists (chat models often list several, e.g. an end-of-turn token besides the end-of-text one)."""
    ids = [tokenizer.eos_token_id]
    listed = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if listed is not None:
        ids += [listed] if isinstance(listed, int) else list(listed)
    return tuple(dict.fromkeys(int(i) for i in ids if i is not None))


def load_backbone(path: str, trust_remote_code: bool = False, tokenizer=None) -> nn.Module:
    """The base transformer (no LM head) of a checkpoint, for a separate critic or a reward model."""
    from transformers import AutoModel

    try:
        model = AutoModel.from_pretrained(path, dtype=torch.float32, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, SafetensorError) as error:
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


def disable_dropout(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def save_model(model: nn.Module, tokenizer, directory: Path, state_dict: Optional[dict] = None) -> None:
    """``save_pretrained`` (transformers alone loads it) and the tokenizer; non-finite weights are refused.
    ``state_dict``: the weights to write instead of the model's own (a sharded model's, gathered)."""
    weights = state_dict.items() if state_dict is not None else model.named_parameters()
    for name, param in weights:
        if not torch.isfinite(param).all():
            raise TrainingError(f"refusing to save non-finite weights ({name}); the run diverged")
    model.save_pretrained(directory, safe_serialization=True, state_dict=state_dict)
    tokenizer.save_pretrained(directory)


def frozen_copy(model: nn.Module) -> nn.Module:
    """A frozen reference copy of the initial policy."""
    reference = copy.deepcopy(model)
    reference.eval()
    reference.requires_grad_(False)
    return reference


# ---- the model's context: prompt + response must fit ------------------------------------------------------
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "seq_length", "max_sequence_length")


def model_context_length(path: str) -> Optional[tuple[int, str]]:
    """(tokens, where it was read) from the checkpoint's config.json, without loading weights or running its
    code: a local directory's file, or the hub cache's copy for a hub id. None when it cannot be told."""
    local = Path(path).expanduser()
    config_file = local / "config.json"
    if not config_file.is_file():
        try:
            from transformers.utils import cached_file

            found = cached_file(path, "config.json", local_files_only=True,
                                _raise_exceptions_for_missing_entries=False)
        except Exception:  # noqa: BLE001 -- not a hub id, not cached: the model loader reports it
            return None
        if found is None:
            return None
        config_file = Path(found)
    try:
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    for section in (data, data.get("text_config")) if isinstance(data, dict) else ():
        for key in _CONTEXT_KEYS:
            value = section.get(key) if isinstance(section, dict) else None
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value, f"{key} in {config_file}"
    return None


def _longest_response(config: RunConfig, command: str) -> tuple[str, int]:
    """(field, tokens) of the longest response ``command`` puts after a prompt: generated ones
    (generation.max_new_tokens; in SFT only with sft.eval_every) and SFT's targets (sft.max_response_tokens,
    which defaults to generation.max_new_tokens)."""
    generated = ("generation.max_new_tokens", config.generation.max_new_tokens)
    if command != "sft":
        if config.environment is not None:  # resolved by _resolve_episode_tokens
            return "environment.max_episode_tokens", config.environment.max_episode_tokens
        return generated
    targets = ("sft.max_response_tokens", config.sft.max_response_tokens) if config.sft.max_response_tokens \
        else generated
    return max(targets, generated, key=lambda item: item[1]) if config.sft.eval_every else targets


def fit_to_context(config: RunConfig, model_path: str, source: str = "config",
                   command: Literal["train", "sft", "eval"] = "train") -> RunConfig:
    """The longest prompt plus the longest response ``command`` makes must fit the model's context.

    With an environment the response is the episode after its first prompt (``environment.max_episode_tokens``,
    which :func:`_resolve_episode_tokens` sets when unset, as it does ``environment.max_turn_tokens``).

    An unset ``data.max_prompt_tokens`` becomes ``context - response`` when its default (256) would not fit;
    a value the user set is kept, and refused when too long (ConfigError names both fields and the context).
    """
    found = model_context_length(model_path)
    if config.environment is not None and command != "sft":
        config = _resolve_episode_tokens(config, found[0] if found else None)
    if found is None:
        return config
    context, where = found
    response_field, response = _longest_response(config, command)
    prompt = config.data.max_prompt_tokens
    if prompt + response <= context:
        return config
    user_set = "max_prompt_tokens" in config.data.model_fields_set
    if user_set or response >= context:
        raise ConfigError(f"{source}: data.max_prompt_tokens ({prompt}{'' if user_set else ', the default'}) + "
                          f"{response_field} ({response}) = {prompt + response} tokens, more than the model's "
                          f"context of {context} ({where}); lower them")
    config = config.model_copy(deep=True)
    config.data.max_prompt_tokens = context - response
    return config


def _resolve_episode_tokens(config: RunConfig, context: Optional[int]) -> RunConfig:
    """Fill in ``environment.max_turn_tokens`` (``generation.max_new_tokens``) and ``max_episode_tokens``
    (``max_turns`` turns, shrunk to what the context leaves after the prompt -- a prompt limit left at its
    default counts for at most half the context -- but never below one turn) when unset; values the user set are
    kept (and checked by :func:`fit_to_context`)."""
    environment = config.environment
    turn = environment.max_turn_tokens or config.generation.max_new_tokens
    episode = environment.max_episode_tokens
    if episode is None:
        episode = environment.max_turns * turn
        if context is not None:
            prompt = config.data.max_prompt_tokens
            if "max_prompt_tokens" not in config.data.model_fields_set:
                prompt = min(prompt, context // 2)
            episode = max(turn, min(episode, context - prompt))
    if (turn, episode) == (environment.max_turn_tokens, environment.max_episode_tokens):
        return config
    config = config.model_copy(deep=True)
    config.environment.max_turn_tokens = turn
    config.environment.max_episode_tokens = episode
    return config
