"""One rank of the data-parallel tests (tests/test_distributed.py).

``python tests/dp_worker.py updates MODEL RUN_DIR OUT`` runs 3 PPO updates on fixed responses and saves the weights
(OUT.rank<r>);
``python tests/dp_worker.py fsdp MODEL RUN_DIR OUT`` does the same with ``train.parallel: fsdp`` (rank 0 saves the
gathered weights and writes the final model into OUT.final);
``python tests/dp_worker.py failing MODEL RUN_DIR`` trains with a reward that fails on rank 1 only (``failing_fsdp``:
with ``train.parallel: fsdp``). Started with
torchrun's variables (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) it is one rank of a process group; without them
(or through :func:`run_updates` in the test process) it is the one-process run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from pydantic import BaseModel

from ppo_core import Reward, hookimpl
from ppo_core.commands.train import build_run, make_scorer, next_prompt_batch, write_final
from ppo_core.config import load_config
from ppo_core.modeling.loading import fit_to_context
from ppo_core.ppo.rollout import Responses
from ppo_core.runtime.distributed import join_process_group
from ppo_core.runtime.fsdp import full_state_dict, is_sharded

ROWS = 8  # the global rollout batch
LENGTH = 8  # generation.max_new_tokens


class LetterShare(Reward):
    """The share of the letter a in the response (the responses are letters a-e: the scores vary)."""

    name = "letter_share"

    class Options(BaseModel):
        pass

    def __call__(self, samples):
        return [s.response.count("a") / max(len(s.response), 1) for s in samples]


class LetterPlugin:
    @hookimpl
    def register_rewards(self, register):
        register(LetterShare)


PLUGINS = [("dp_letters", LetterPlugin())]


def equivalence_sections(model_dir, run_dir) -> dict:
    """Every global statistic in play: whitened rewards and advantages, a normalised reward, the adaptive KL
    controller; one minibatch per epoch (so N ranks' minibatches hold the same rows as one process's), two
    micro-batches per rank (accumulation) and responses of very different lengths on the two ranks (token
    weights)."""
    return {
        "model": {"path": str(model_dir), "device": "cpu"},
        "data": {"dataset": "reverse", "options": {"size": 64}},
        "rewards": [{"name": "letter_share", "normalize": True, "isolation": "none"}],
        "ppo": {"rollout_batch_size": ROWS, "minibatch_size": ROWS, "micro_batch_size": 2, "epochs": 2,
                "whiten_rewards": True, "kl": {"coef": 0.05, "target": 0.5, "horizon": 10}},
        "generation": {"max_new_tokens": LENGTH},
        # Adam divides each gradient component by its own size: one that is 0 in exact arithmetic (GPT-2's key bias)
        # is float noise in both runs, and eps 1e-8 turns that noise into steps of lr (1.8e-5 apart after 3
        # updates, docs/design.md "Data parallel"); eps 1e-6 keeps noise a noise
        "optim": {"lr": 1e-3, "eps": 1e-6, "schedule": "constant"},
        "train": {"updates": 3, "output_dir": str(run_dir), "progress": "none", "seed": 0},
        "plugins": {"allow": ["datasets", "dp_letters"]},
    }


def fixed_responses(update: int, tokenizer) -> Responses:
    """The global batch's responses of one update: letters a-e, rows 0-3 long (5-8 tokens), rows 4-7 short (1-3);
    even rows end with eos."""
    generator = torch.Generator().manual_seed(1000 + update)
    letters = torch.tensor(tokenizer.convert_tokens_to_ids(list("abcde")))
    tokens = letters[torch.randint(len(letters), (ROWS, LENGTH), generator=generator)]
    lengths = torch.cat([torch.randint(5, LENGTH + 1, (ROWS // 2,), generator=generator),
                         torch.randint(1, 4, (ROWS // 2,), generator=generator)])
    mask = torch.arange(LENGTH)[None, :] < lengths[:, None]
    stopped = torch.arange(ROWS) % 2 == 0
    last = (lengths - 1).clamp(min=0)
    tokens[stopped, last[stopped]] = tokenizer.eos_token_id
    tokens = tokens.masked_fill(~mask, tokenizer.pad_token_id)
    return Responses(tokens=tokens, mask=mask, stopped_by_eos=stopped)


def weights(model) -> dict:
    """Every weight, unsharded (FSDP: on rank 0; the other ranks get an empty dict)."""
    if is_sharded(model):
        return full_state_dict(model)
    return {k: v.clone() for k, v in model.state_dict().items()}


def run_updates(model_dir, run_dir, updates: int = 3, parallel: str = "ddp", final=None) -> dict:
    """``updates`` PPO updates whose sampling returns this rank's rows of :func:`fixed_responses`; the weights, β
    and each update's statistics; with ``final``, the final model written there."""
    dist = join_process_group("cpu", parallel)
    sections = equivalence_sections(model_dir, run_dir)
    sections["train"]["parallel"] = parallel
    config = load_config(None, [], base=sections)
    run = build_run(fit_to_context(config, config.model.path), PLUGINS, dist=dist)
    rows = dist.shard(list(range(ROWS)))
    history = []
    initial = weights(run.model)
    with run.composer:
        scorer = make_scorer(run.composer, run.tokenizer, dist)
        for update in range(updates):
            every = fixed_responses(update, run.tokenizer)
            mine = Responses(every.tokens[rows], every.mask[rows], every.stopped_by_eos[rows])

            def sample(input_ids, attention_mask, greedy=False, on_chunk=None, mine=mine):
                if on_chunk is not None:
                    on_chunk(slice(None), mine)
                return mine

            run.engine.generate = sample
            history.append(run.engine.step(next_prompt_batch(run), scorer))
    if final is not None:
        write_final(run, Path(final))
    return {"weights": weights(run.model),
            "initial": initial,
            "kl_coef": run.engine.kl_controller.value, "stats": history}


def failing_reward(samples):
    """Scores like a reward until rank 1's second batch, then fails there (every other rank goes on)."""
    failing_reward.calls = getattr(failing_reward, "calls", 0) + 1
    if os.environ.get("RANK") == "1" and failing_reward.calls == 2:
        raise RuntimeError("failing on rank 1 on purpose")
    return [float(len(sample.response)) for sample in samples]


def run_failing(model_dir, run_dir, parallel: str = "ddp") -> int:
    from ppo_core import api
    from ppo_core.cli import report_user_error
    from ppo_core.errors import UserError

    config = equivalence_sections(model_dir, run_dir)
    config["rewards"] = [{"name": "failing_reward", "isolation": "none"}]
    config["plugins"] = {}
    config["train"].update(updates=4, parallel=parallel)
    try:
        api.train(config, rewards=[failing_reward])
    except UserError as error:
        return report_user_error(error)  # as the CLI does it
    return 0


def main(argv) -> int:
    mode, model_dir, run_dir = argv[0], Path(argv[1]), Path(argv[2])
    if mode in ("updates", "fsdp"):
        parallel = "fsdp" if mode == "fsdp" else "ddp"
        final = f"{argv[3]}.final" if mode == "fsdp" else None  # every rank gathers, rank 0 writes
        result = run_updates(model_dir, run_dir, parallel=parallel, final=final)
        torch.save(result, f"{argv[3]}.rank{os.environ.get('RANK', '0')}")
        return 0
    return run_failing(model_dir, run_dir, "fsdp" if mode == "failing_fsdp" else "ddp")


if __name__ == "__main__":
    import dp_worker  # the module by its own name, so the reward function pickles by reference

    sys.exit(dp_worker.main(sys.argv[1:]))
