"""Meta-tests of the plugin contract (datasette style): every hook is documented and exercised by a test.

A new hook in ``ppo_core/hookspecs.py`` makes these fail until it has a docstring with a ``:param`` entry
for each argument and a test somewhere under ``tests/`` implements it.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

from ppo_core import hookimpl
from ppo_core.plugin import hookspecs
from ppo_core.plugin.loading import ENTRY_POINT_GROUP, make_plugin_manager

TESTS = Path(__file__).parent
SPEC_MARK = f"{hookspecs.PROJECT_NAME}_spec"


def hook_functions() -> dict[str, object]:
    return {name: value for name, value in vars(hookspecs).items()
            if callable(value) and getattr(value, SPEC_MARK, None) is not None}


HOOKS = sorted(hook_functions())


def test_hook_specs_are_what_the_plugin_manager_knows():
    manager = make_plugin_manager()
    known = {name for name in vars(manager.hook) if not name.startswith("_")}
    assert set(HOOKS) == known
    assert {"register_rewards", "register_datasets"} <= set(HOOKS)
    assert hookspecs.PROJECT_NAME == ENTRY_POINT_GROUP == "ppo_core"  # one name for project and group
    assert hookimpl.project_name == hookspecs.PROJECT_NAME


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented(hook):
    function = hook_functions()[hook]
    doc = inspect.getdoc(function)
    assert doc, f"hook {hook} has no docstring"
    assert doc.splitlines()[0].strip(), f"hook {hook}: the docstring should start with a summary line"
    signature = inspect.signature(function)
    assert signature.parameters, f"hook {hook} takes no arguments"
    for name, parameter in signature.parameters.items():
        match = re.search(rf"^:param {re.escape(name)}:\s*(\S.*)", doc, re.MULTILINE)
        assert match, f"hook {hook}: no ':param {name}:' entry in its docstring"
        assert len(match.group(1).split()) >= 3, f"hook {hook}: ':param {name}:' says too little"
        assert parameter.annotation is not inspect.Parameter.empty, f"hook {hook}: argument {name} is not typed"
    documented = set(re.findall(r"^:param (\w+):", doc, re.MULTILINE))
    assert documented == set(signature.parameters), f"hook {hook}: documents arguments it does not take"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_spec_is_bodiless(hook):
    tree = ast.parse(inspect.getsource(hook_functions()[hook]))
    body = tree.body[0].body
    assert len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant), (
        f"hook spec {hook} should hold only its docstring")


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_exercised_by_a_test(hook):
    implemented_in = []
    for path in sorted(TESTS.rglob("*.py")):
        if path.name == Path(__file__).name:
            continue
        if re.search(rf"^\s*def {re.escape(hook)}\(", path.read_text(encoding="utf-8"), re.MULTILINE):
            implemented_in.append(path.name)
    assert implemented_in, f"no test under tests/ implements the hook {hook}"
