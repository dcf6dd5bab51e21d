"""The layout holds: each folder of ppo_core imports only from folders below it, and no module grows past 400 lines
(docs/design.md, "Layout")."""

from __future__ import annotations

import ast
from pathlib import Path

import ppo_core

PACKAGE = Path(ppo_core.__file__).parent
#: bottom to top; a module may import from its own layer and the ones before it
LAYERS = ["errors", "config", "plugin", "runtime", "modeling", "data", "rewards", "ppo", "reward_model", "commands",
          "api", "cli"]
TOP = {"__init__": "cli", "__main__": "cli", "testing": "cli"}  # the public surface and entry points sit on top
MAX_LINES = 400


def layer_of(module: str) -> int:
    name = module.split(".")[1] if "." in module else "__init__"
    return LAYERS.index(TOP.get(name, name))


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found.append((".".join(parts[:-1] if parts[-1] == "__init__" else parts), path))
    return found


def imported(module: str, path: Path) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                names.add(".".join(base + ([node.module] if node.module else [])))
            elif node.module and node.module.startswith("ppo_core."):
                names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names if alias.name.startswith("ppo_core."))
    return {name for name in names if name.startswith("ppo_core.")}


def test_every_import_points_downward():
    upward = [f"{module} imports {target}" for module, path in modules() if module != "ppo_core"
              for target in imported(module, path) if layer_of(target) > layer_of(module)]
    assert not upward, upward


def test_no_module_over_400_lines():
    long = {str(path.relative_to(PACKAGE)): n for _, path in modules()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, long
