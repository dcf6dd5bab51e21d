"""`ppo-core`: train, plugins, config schema, init-model."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Optional, Sequence

from .errors import UserError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="run config, YAML or JSON")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value (repeatable), e.g. --set ppo.epochs=2")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ppo-core", description="PPO fine-tuning of causal language models "
                                     "with plugin rewards and datasets.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="run PPO as a config describes")
    _add_config_args(train)
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the run dir")
    train.add_argument("--overwrite", action="store_true", help="replace an existing run directory")

    plugins = commands.add_parser("plugins", help="list the loaded plugins with their rewards and datasets")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")

    config = commands.add_parser("config", help="config helpers")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    config_commands.add_parser("schema", help="print the run config's JSON schema")
    config_commands.add_parser("reference", help="print the configuration reference (Markdown)")
    check = config_commands.add_parser("check", help="validate a config and print it resolved")
    _add_config_args(check)

    init = commands.add_parser("init-model", help="write a tiny character-level tokenizer and causal LM")
    init.add_argument("directory")
    init.add_argument("--size", default="small", help="tiny, small (4x256) or medium (6x512)")
    init.add_argument("--seed", type=int, default=0)
    init.add_argument("--n-positions", type=int, default=None, help="context length (default 128)")
    init.add_argument("--overwrite", action="store_true")
    return parser


def cmd_train(args) -> int:
    from .config import load_config

    config = load_config(args.config, args.overrides)
    from .train import Interrupted, train  # after the config is read: a config error need not import torch

    try:
        final = train(config, resume=args.resume, overwrite=args.overwrite, source=args.config)
    except Interrupted as stop:
        command = shlex.join(["ppo-core", "train", args.config, *sum((["--set", o] for o in args.overrides), []),
                              "--resume"])
        print(f"ppo-core: stopped by {stop.signal_name} after update {stop.update}; checkpoint {stop.checkpoint}\n"
              f"resume with: {command}", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"final model: {final}")
    return 0


def cmd_plugins(args) -> int:
    from .plugins import load_plugins

    plugins = load_plugins()
    registry = plugins.registry
    listing = {
        "plugins": [
            {"name": info.name, "distribution": info.distribution, "version": info.version,
             "entry_point": info.entry_point, "rewards": registry.by_plugin(info.name, "reward"),
             "datasets": registry.by_plugin(info.name, "dataset")}
            for info in plugins.loaded
        ],
        "failed": [
            {"name": f.info.name, "distribution": f.info.distribution, "entry_point": f.info.entry_point,
             "error": f.error}
            for f in plugins.failed
        ],
        "skipped": [{"name": info.name, "distribution": info.distribution} for info in plugins.skipped],
    }
    if args.json:
        print(json.dumps(listing, indent=2))
        return 0
    if not listing["plugins"]:
        print("no plugins loaded")
    for item in listing["plugins"]:
        origin = f"{item['distribution']} {item['version']}" if item["distribution"] else "in process"
        print(f"{item['name']} ({origin})")
        print(f"  rewards:  {', '.join(item['rewards']) or '-'}")
        print(f"  datasets: {', '.join(item['datasets']) or '-'}")
    for failure in plugins.failed:
        print(f"FAILED {failure.describe()}")
    for item in listing["skipped"]:
        print(f"skipped {item['name']} (allow/block list)")
    return 0


def cmd_config(args) -> int:
    from .config import config_schema, load_config

    if args.config_command == "schema":
        print(json.dumps(config_schema(), indent=2))
        return 0
    if args.config_command == "reference":
        from .docs import config_reference_markdown

        print(config_reference_markdown())
        return 0
    import yaml

    config = load_config(args.config, args.overrides)
    print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), end="")
    return 0


def cmd_init_model(args) -> int:
    from .tiny import init_model

    try:
        path = init_model(args.directory, size=args.size, seed=args.seed, n_positions=args.n_positions,
                          overwrite=args.overwrite)
    except (FileExistsError, ValueError) as error:
        raise UserError(f"init-model: {error}") from None
    print(path)
    return 0


COMMANDS = {"train": cmd_train, "plugins": cmd_plugins, "config": cmd_config, "init-model": cmd_init_model}


def quiet_transformers() -> None:
    """Our own progress output replaces transformers' per-file bars and advisory warnings."""
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command not in ("plugins", "config"):
        quiet_transformers()
    try:
        return COMMANDS[args.command](args)
    except UserError as error:
        print(f"ppo-core: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("ppo-core: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
