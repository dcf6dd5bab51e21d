"""The README stays true: its configuration reference matches the schema, its commands exist, CI runs its
test command."""

from __future__ import annotations

import re
from pathlib import Path

from ppo_core.cli import build_parser
from ppo_core.config.reference import END, START, config_reference_markdown

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def test_config_reference_matches_the_schema():
    block = README[README.index(START):README.index(END) + len(END)]
    assert block == config_reference_markdown(), "regenerate with: python -m ppo_core.config.reference README.md"


def test_every_config_field_is_in_the_reference():
    from ppo_core.config import RunConfig

    def keys(model, prefix=""):
        for name, field in model.model_fields.items():
            annotation = field.annotation
            inner = getattr(annotation, "__args__", (None,))[0] if str(annotation).startswith("list[") else None
            if str(annotation).startswith("typing.Optional[ppo_core"):  # an optional section: its fields
                annotation = annotation.__args__[0]
            target = inner or annotation
            if isinstance(target, type) and hasattr(target, "model_fields"):
                yield from keys(target, f"{prefix}{name}{'[]' if inner else ''}.")
            else:
                yield f"{prefix}{name}"

    for key in keys(RunConfig):
        assert f"| `{key}` |" in README, key


def test_every_command_in_the_readme_exists():
    subcommands = build_parser()._subparsers._group_actions[0].choices
    mentioned = set(re.findall(r"`ppo-core ([a-z-]+)", README))
    assert mentioned, "the README names no command"
    assert mentioned <= set(subcommands), mentioned - set(subcommands)


def test_ci_runs_the_readme_test_command():
    assert "make test" in README
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.MULTILINE)


def test_every_example_config_validates():
    from ppo_core.config import load_config

    for path in sorted((REPO / "examples").glob("*.yaml")) + [REPO / "examples" / "demo" / "ppo.yaml",
                                                               REPO / "examples" / "demo" / "sft.yaml"]:
        load_config(path)


def test_bring_your_own_example_trains_on_a_checkpoint_saved_to_disk(tmp_path, monkeypatch):
    from ppo_core.commands.train import train
    from ppo_core.config import load_config
    from ppo_core.modeling.tiny import init_model
    from ppo_core.runtime.metrics import read_metrics

    monkeypatch.chdir(REPO)  # the example's data path is relative to the repository root
    model = init_model(tmp_path / "checkpoint", "tiny", seed=0)
    config = load_config(REPO / "examples" / "bring-your-own.yaml", [
        f"model.path={model}", "train.updates=1", "train.save_every=0", f"train.output_dir={tmp_path / 'run'}",
        "train.progress=none", "generation.max_new_tokens=4", "data.options.eval_fraction=0"])
    final = train(config)
    assert (final / "model.safetensors").is_file()
    assert read_metrics(tmp_path / "run" / "metrics.jsonl")[0]["update"] == 1
