"""pytest fixtures for ppo-core and for plugin distributions: load with ``pytest -p ppo_core.testing`` (or
``pytest_plugins = ["ppo_core.testing"]`` in a top-level conftest.py).

The repository's ``tests/`` and each bundled plugin's ``plugins/*/tests`` load it through ``addopts`` in their
pyproject.toml, so a plugin's tests run with the same fixtures from the repository root or from the plugin's own
directory, and a third-party plugin can use them too. pytest is needed only to load this module.

- every test starts with the plugin allow/block environment variables unset (a developer's shell must not
  change which plugins a test sees);
- ``make_plugin`` builds an in-process plugin (a module object holding ``@hookimpl`` functions);
- ``make_distribution`` builds a REAL throwaway distribution (``*.dist-info`` with ``entry_points.txt``)
  on ``sys.path``, so entry-point discovery runs exactly as for a pip-installed plugin;
- ``make_sample`` builds a :class:`ppo_core.Sample`;
- ``tiny_model_dir`` is a tiny random checkpoint written once per session by :func:`ppo_core.modeling.tiny.init_model`,
  ``tiny_tokenizer`` its tokenizer;
- ``trained_reward_model`` is a reward model trained once per session on that checkpoint (see its docstring);
- ``train_tiny_run`` runs a real ``ppo-core train`` of a few updates and returns its metrics and stderr.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import random
import sys
import textwrap
import types
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest
import torch

from . import Sample
from .plugin.loading import ALLOW_ENV, BLOCK_ENV

_plugin_ids = itertools.count()


@pytest.fixture(autouse=True)
def _no_plugin_env(monkeypatch):
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    monkeypatch.delenv(BLOCK_ENV, raising=False)


@pytest.fixture
def make_plugin() -> Callable[..., types.ModuleType]:
    """``make_plugin(register_rewards=fn, ...)``: a module-like plugin object holding the given hook functions.

    The functions must already carry ``@ppo_core.hookimpl``; the module gets a unique name.
    """

    def make(name: Optional[str] = None, **hooks: Callable) -> types.ModuleType:
        module = types.ModuleType(name or f"ppo_core_test_plugin_{next(_plugin_ids)}")
        for hook_name, function in hooks.items():
            setattr(module, hook_name, function)
        return module

    return make


@pytest.fixture
def make_distribution(tmp_path, monkeypatch) -> Callable[..., Path]:
    """``make_distribution(name, entry_points={ep_name: "module"}, modules={"module": source})``.

    Writes the modules and ``<name>-<version>.dist-info/{METADATA,entry_points.txt}`` into a fresh directory,
    puts that directory first on ``sys.path`` (import and metadata caches invalidated) and returns it.
    The modules are dropped from ``sys.modules`` again at teardown.
    """
    created: list[str] = []

    def make(name: str, entry_points: dict[str, str], modules: dict[str, str], version: str = "0.0.1",
             group: str = "ppo_core") -> Path:
        site = tmp_path / f"site-{name}"
        site.mkdir()
        for module, source in modules.items():
            (site / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
            created.append(module)
        dist_info = site / f"{name.replace('-', '_')}-{version}.dist-info"
        dist_info.mkdir()
        (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
                                            encoding="utf-8")
        lines = [f"[{group}]"] + [f"{ep} = {target}" for ep, target in entry_points.items()]
        (dist_info / "entry_points.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        monkeypatch.syspath_prepend(str(site))
        importlib.invalidate_caches()
        return site

    try:
        yield make
    finally:
        for module in created:
            sys.modules.pop(module, None)
        importlib.invalidate_caches()


@pytest.fixture
def make_sample() -> Callable[..., Sample]:
    def make(response: str = "", prompt: str = "p", solution: Any = None, stop_reason: str = "eos",
             **fields: Any) -> Sample:
        return Sample(prompt=prompt, response=response, response_ids=tuple(ord(c) for c in response),
                      solution=solution, stop_reason=stop_reason, fields=fields)

    return make


# ---- tiny models ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Tiny models are fastest on one thread (and a loaded machine makes more threads much slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random GPT-2 checkpoint with the character tokenizer (written once per test session)."""
    from .modeling.tiny import init_model

    return init_model(tmp_path_factory.mktemp("tiny-model") / "model", size="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from .modeling.loading import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


def toy_preference_pairs(n: int = 160, seed: int = 0) -> list[dict]:
    """Separable: the chosen response is only 'a's, the rejected one only 'b's (lengths vary)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        word = "".join(rng.choice("xyz") for _ in range(rng.randint(2, 5)))
        rows.append({"prompt": f"say: {word} =", "chosen": "a" * rng.randint(1, 6),
                     "rejected": "b" * rng.randint(1, 6)})
    return rows


def random_samples(tokenizer, n: int = 12, seed: int = 3) -> list[Sample]:
    """Samples over the toy prompts with responses of 'a', 'b' and 'q' (some empty), stopped by eos or cut."""
    rng = random.Random(seed)
    samples = []
    for i in range(n):
        prompt = "say: " + "".join(rng.choice("xyz") for _ in range(rng.randint(1, 6))) + " ="
        response = "".join(rng.choice("abq") for _ in range(rng.randint(0 if i % 3 else 1, 9)))
        ids = tuple(tokenizer(response, add_special_tokens=False)["input_ids"])
        samples.append(Sample(prompt=prompt, response=response, response_ids=ids, solution=None,
                              stop_reason="eos" if i % 3 else "length"))
    return samples


def train_tiny_run(model: Path, directory: Path, data: dict, rewards: list[dict], updates: int = 2
                   ) -> tuple[list[dict], str]:
    """A real ``ppo-core train`` (a subprocess, rollout batches of 4, 4 new tokens) of ``updates`` updates on
    ``model``, writing ``directory``/run; returns its metrics lines and its stderr (shown when it fails)."""
    import subprocess

    import yaml

    from .runtime.metrics import read_metrics

    config = {
        "model": {"path": str(model)}, "data": data, "rewards": rewards,
        "ppo": {"rollout_batch_size": 4, "minibatch_size": 4, "epochs": 1},
        "generation": {"max_new_tokens": 4},
        "train": {"updates": updates, "output_dir": str(directory / "run"), "progress": "lines"},
    }
    (directory / "run.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-m", "ppo_core.cli", "train", str(directory / "run.yaml")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return read_metrics(directory / "run" / "metrics.jsonl"), result.stderr


@pytest.fixture(scope="session")
def trained_reward_model(tiny_model_dir, tmp_path_factory):
    """``(directory, result, normalization)``: a head on the frozen ``tiny_model_dir`` backbone trained on
    :func:`toy_preference_pairs`, normalised on the starting policy and saved (once per session: the reward-model
    tests of the core and of the ``reward_model`` plugin share it)."""
    from .config.train_reward import RewardTrainOptions
    from .reward_model import RewardData, normalize_on_policy, save_reward_model, train_reward_model

    with one_torch_thread():
        data = RewardData.from_rows(toy_preference_pairs())
        result = train_reward_model(str(tiny_model_dir), data,
                                    RewardTrainOptions(epochs=30, held_out_fraction=0.25))
        normalization = normalize_on_policy(result.model, str(tiny_model_dir), data.prompts, num_prompts=48,
                                            max_new_tokens=8, seed=0)
        directory = save_reward_model(result.model, tmp_path_factory.mktemp("rm") / "reward")
    return directory, result, normalization
