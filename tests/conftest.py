"""Fixtures shared by the test modules.

- every test starts with the plugin allow/block environment variables unset (a developer's shell must not
  change which plugins a test sees);
- ``make_plugin`` builds an in-process plugin (a module object holding ``@hookimpl`` functions);
- ``make_distribution`` builds a REAL throwaway distribution (``*.dist-info`` with ``entry_points.txt``)
  on ``sys.path``, so entry-point discovery runs exactly as for a pip-installed plugin;
- ``make_sample`` builds a :class:`ppo_core.Sample`;
- ``tiny_model_dir`` is a tiny random checkpoint written once per session by :func:`ppo_core.modeling.tiny.init_model`.
"""

from __future__ import annotations

import importlib
import itertools
import sys
import textwrap
import types
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from ppo_core import Sample
from ppo_core.plugin.loading import ALLOW_ENV, BLOCK_ENV

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


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random GPT-2 checkpoint with the character tokenizer (written once per test session)."""
    from ppo_core.modeling.tiny import init_model

    return init_model(tmp_path_factory.mktemp("tiny-model") / "model", size="tiny", seed=0)
