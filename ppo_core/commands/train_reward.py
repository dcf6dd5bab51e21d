"""`ppo-core train-reward CONFIG`: pairs or labels -> a trained, normalised, saved reward model."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..config.train_reward import TrainRewardConfig
from ..data.prompts import PromptText, render_prompt
from ..errors import UserError
from ..modeling.loading import load_tokenizer, resolve_device
from ..plugin.contract import Record, RunContext
from ..plugin.loading import load_plugins
from ..reward_model.data import RewardData, read_reward_data, write_jsonl
from ..reward_model.normalization import (
    Normalization,
    normalize_on_policy,
    normalize_on_responses,
)
from ..reward_model.pairs import make_preference_pairs
from ..reward_model.storage import SAVED_ENTRIES, save_reward_model
from ..reward_model.training import TrainResult, train_reward_model
from ..runtime.checkpoints import check_output_location
from ..runtime.rundir import check_replaceable


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
    plugins = load_plugins(config.plugins.allow, config.plugins.block)
    context = RunContext(seed=config.train.seed, tokenizer=tokenizer, policy_path=config.model.path,
                         trust_remote_code=config.model.trust_remote_code)
    dataset = plugins.registry.build("dataset", data.dataset, data.options, context, where=f"{source}: data.options",
                                     name_where=f"{source}: data.dataset")
    records = list(dataset.records(data.split))

    def render(record: Record) -> PromptText:
        # as the PPO run renders its prompts (encode_records); the pairs remember whether the text is templated,
        # so that training tokenizes it as the engine does
        return render_prompt(record, tokenizer, data.chat_template)

    pairs = make_preference_pairs(records, random.Random(data.seed), data.corruptions, data.pairs_per_record, render)
    if data.save_pairs:
        write_jsonl(data.save_pairs, pairs)
    return RewardData("pairs", pairs, f"dataset {data.dataset} ({data.split} split)")


def run_train_reward(config: TrainRewardConfig, overwrite: bool = False, source: str = "config",
                     progress: Optional[Callable[[dict[str, float]], None]] = None) -> TrainRewardOutcome:
    """Train, normalise and save as ``config`` says; returns where it saved and the metrics."""
    if config.threads:
        torch.set_num_threads(config.threads)
    output = Path(config.output_dir).expanduser().absolute()
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        if not overwrite:
            raise UserError(f"output_dir: {output} already exists; pass --overwrite to replace it")
        if not output.is_dir():
            raise UserError(f"output_dir: {output} is a file, not a directory")
        check_replaceable(output, SAVED_ENTRIES, "output_dir")
    check_output_location(output, "output_dir", directory=True)  # before the training, which would be lost
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
                result.model, policy, data.prompt_texts, num_prompts=norm.prompts, max_new_tokens=norm.max_new_tokens,
                temperature=norm.temperature, top_k=norm.top_k, top_p=norm.top_p, seed=norm.seed,
                batch_size=norm.batch_size, trust_remote_code=config.model.trust_remote_code)
        else:
            prompts = [item.prompt_text for item in data.items]
            responses = [response for _prompt, response in data.responses]
            normalization = normalize_on_responses(result.model, prompts, responses, config.train.append_eos,
                                                   norm.batch_size)
    path = save_reward_model(result.model, output)
    return TrainRewardOutcome(path, result, normalization, data)
