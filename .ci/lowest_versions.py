"""Print pip constraints pinning every ``name>=X`` requirement of the given pyproject.toml files to X.

``make test-min-deps`` installs the project and the bundled plugins under these constraints, so the suite runs
against the lowest versions the project declares: a lower bound in a pyproject.toml is then a tested one.
Reads ``[project] dependencies`` and the ``test`` extra (the other extras have no lower bounds).
"""

from __future__ import annotations

import re
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same TOML reader, as pip vendors it
    from pip._vendor import tomli as tomllib

LOWER_BOUND = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*>=\s*([0-9][^,;\s]*)")


def lower_bounds(pyproject_paths: list[str]) -> dict[str, str]:
    bounds: dict[str, str] = {}
    for path in pyproject_paths:
        with open(path, "rb") as file:
            project = tomllib.load(file)["project"]
        requirements = project.get("dependencies", []) + project.get("optional-dependencies", {}).get("test", [])
        for requirement in requirements:
            match = LOWER_BOUND.match(requirement)
            if match:
                name = re.sub(r"[-_.]+", "-", match.group(1)).lower()
                version = match.group(2)
                if name in bounds and bounds[name] != version:
                    sys.exit(f"{path}: {name}>={version}, but another pyproject.toml says {name}>={bounds[name]}")
                bounds[name] = version
    return bounds


if __name__ == "__main__":
    for name, version in sorted(lower_bounds(sys.argv[1:]).items()):
        print(f"{name}=={version}")
