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

The token sequence a reward model scores, trains on and is normalised on is exactly the engine's: the prompt ids
as :func:`ppo_core.data.prompts.prompt_token_ids` makes them (the tokenizer's special tokens, e.g. a leading bos,
added unless the prompt is chat-templated text, which writes its own; a pair made from a dataset records which),
then the response tokens, then eos when the response stopped at one (:func:`sample_token_ids`). The score is
read at the last real token (the eos where there is one), with position ids ``cumsum(mask) − 1``, so left and
right padding give the same score.

``ppo-core train-reward CONFIG`` (:mod:`ppo_core.commands.train_reward`) does all four steps;
the ``ppo-core-reward-model`` plugin serves the result as the reward ``reward_model``.
"""

from .data import (
    DataKind,
    PreferencePair,
    RewardData,
    ScoredResponse,
    read_reward_data,
    write_jsonl,
)
from .model import (
    RewardModel,
    RewardModelError,
    sample_token_ids,
    text_token_ids,
    tokenizers_compatible,
)
from .normalization import (
    Normalization,
    fit_normalization,
    normalize_on_policy,
    normalize_on_responses,
)
from .pairs import corrupt, make_preference_pairs
from .storage import (
    RewardModelInfo,
    load_reward_head,
    load_reward_model,
    read_reward_model_info,
    save_reward_model,
)
from .training import (
    TrainResult,
    build_reward_model,
    resolve_reference,
    train_reward_model,
)

__all__ = [
    "DataKind",
    "PreferencePair",
    "RewardData",
    "ScoredResponse",
    "read_reward_data",
    "write_jsonl",
    "RewardModel",
    "RewardModelError",
    "sample_token_ids",
    "text_token_ids",
    "tokenizers_compatible",
    "Normalization",
    "fit_normalization",
    "normalize_on_policy",
    "normalize_on_responses",
    "corrupt",
    "make_preference_pairs",
    "RewardModelInfo",
    "load_reward_head",
    "load_reward_model",
    "read_reward_model_info",
    "save_reward_model",
    "TrainResult",
    "build_reward_model",
    "resolve_reference",
    "train_reward_model",
]
