"""`ppo-core`: train, plugins, config schema, init-model."""

from __future__ import annotations

import argparse
import json
import os
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
    init.add_argument("--size", default="small", help="tiny (2 layers x 64), small (4x256; the default) or "
                      "medium (6x512)")
    init.add_argument("--seed", type=int, default=0)
    init.add_argument("--n-positions", type=int, default=None, help="context length (default 128)")
    init.add_argument("--overwrite", action="store_true")

    sft = commands.add_parser("sft", help="supervised fine-tuning on the dataset's solutions (same config)")
    _add_config_args(sft)
    sft.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the run dir")
    sft.add_argument("--overwrite", action="store_true", help="replace an existing run directory")

    evaluate = commands.add_parser("eval", help="score a model on a split with the configured rewards")
    _add_config_args(evaluate)
    evaluate.add_argument("--model", required=True, metavar="DIR", help="the model to score (and its tokenizer)")
    evaluate.add_argument("--split", default="eval", choices=("eval", "train"))
    evaluate.add_argument("--samples", type=int, default=None, metavar="N", help="the first N records only")
    evaluate.add_argument("--out", default=None, metavar="FILE", help="samples JSONL (default: "
                          "DIR/eval_samples.jsonl for a local model, else ./eval_samples.jsonl)")
    evaluate.add_argument("--json", dest="numbers", default=None, metavar="FILE",
                          help="the numbers (default: eval.json next to the samples file)")
    evaluate.add_argument("--seed", type=int, default=None, help="seed of sampled decoding (default: train.seed)")

    train_reward = commands.add_parser("train-reward", help="train a reward model (backbone + MLP head) on "
                                       "preference pairs or scalar labels, normalise it and save it")
    _add_config_args(train_reward)
    train_reward.add_argument("--overwrite", action="store_true", help="replace an existing output_dir")

    demo = commands.add_parser("demo", help="the whole pipeline on an embedded default, with a report")
    demo.add_argument("--out", default=None, help="directory for every stage and the report (default: runs/demo, "
                      "runs/demo-learned-reward with --learned-reward, or runs/demo-NAME with --env NAME)")
    demo.add_argument("--env", default=None, metavar="NAME", help="the pipeline on a bundled environment instead: "
                      "retry_with_feedback, calculator or guess_number (needs ppo-core-environments)")
    demo.add_argument("--quick", action="store_true", help="a few steps of each stage (what the tests run)")
    demo.add_argument("--overwrite", action="store_true", help="replace an existing demo directory")
    demo.add_argument("--seeds", type=int, nargs="+", default=None, metavar="N", help="run the pipeline once per "
                      "seed (several: each in OUT/seed-N) and report the mean, min-max and each seed (default: 0)")
    demo.add_argument("--seed", type=int, default=None, help="one seed (the same as --seeds N)")
    demo.add_argument("--learned-reward", action="store_true", help="PPO driven by a learned reward: an ensemble of "
                      "3 reward models, each with its whole backbone trained, half of PPO's total reward weight "
                      "(examples/demo-learned-reward)")
    return parser


def _run_resumable(args, command: str, unit: str, run) -> int:
    """``run()`` for `train`/`sft` (ppo_core.api); a SIGINT/SIGTERM stop says how to resume."""
    if args.resume and args.overwrite:
        raise UserError(f"{command}: --resume continues the run in the output directory and --overwrite deletes "
                        f"it; pass one of them")
    from .runtime.loop import Interrupted

    try:
        result = run()
    except Interrupted as stop:
        resume = shlex.join(["ppo-core", command, args.config, *sum((["--set", o] for o in args.overrides), []),
                             "--resume"])
        print(f"ppo-core: stopped by {stop.signal_name} after {unit} {stop.update}; checkpoint {stop.checkpoint}\n"
              f"resume with: {resume}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if os.environ.get("RANK", "0") == "0":  # under torchrun every rank returns here; rank 0 wrote the model
        print(f"final model: {result.final_model}")
    return 0


def cmd_train(args) -> int:
    from . import api

    return _run_resumable(args, "train", "update", lambda: api.train(
        args.config, overrides=args.overrides, resume=args.resume, overwrite=args.overwrite))


def cmd_plugins(args) -> int:
    from .plugin.loading import load_plugins

    plugins = load_plugins()
    registry = plugins.registry
    listing = {
        "plugins": [
            {"name": info.name, "distribution": info.distribution, "version": info.version,
             "entry_point": info.entry_point, "rewards": registry.by_plugin(info.name, "reward"),
             "datasets": registry.by_plugin(info.name, "dataset"),
             "environments": registry.by_plugin(info.name, "environment"),
             "loggers": registry.by_plugin(info.name, "logger")}
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
        if item["environments"]:
            print(f"  environments: {', '.join(item['environments'])}")
        if item["loggers"]:
            print(f"  loggers:  {', '.join(item['loggers'])}")
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
        from .config.reference import config_reference_markdown

        print(config_reference_markdown())
        return 0
    import yaml

    from .modeling.loading import fit_to_context

    config = load_config(args.config, args.overrides)
    config = fit_to_context(config, config.model.path, args.config)  # prompt + response within the context
    print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), end="")
    return 0


def check_seed(command: str, seed: Optional[int]) -> None:
    """A ``--seed`` torch can take (64 bits), named before any work starts."""
    from .config.sections import MAX_SEED

    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise UserError(f"{command}: --seed must be in [0, {MAX_SEED}], got {seed}")


def cmd_init_model(args) -> int:
    from .modeling.tiny import init_model

    check_seed("init-model", args.seed)
    try:
        path = init_model(args.directory, size=args.size, seed=args.seed, n_positions=args.n_positions,
                          overwrite=args.overwrite)
    except (FileExistsError, ValueError) as error:
        raise UserError(f"init-model: {error}") from None
    print(path)
    return 0


def cmd_sft(args) -> int:
    from . import api

    return _run_resumable(args, "sft", "step", lambda: api.sft(
        args.config, overrides=args.overrides, resume=args.resume, overwrite=args.overwrite))


def cmd_eval(args) -> int:
    from . import api
    from .config import load_config

    config = load_config(args.config, args.overrides)
    if args.samples is not None and args.samples <= 0:
        raise UserError(f"eval: --samples must be positive, got {args.samples}")
    check_seed("eval", args.seed)
    from .commands.evaluate import NUMBERS_FILE, SAMPLES_FILE, format_table

    model = Path(args.model)
    out = Path(args.out) if args.out else (model if model.is_dir() else Path.cwd()) / SAMPLES_FILE
    numbers_out = Path(args.numbers) if args.numbers else out.parent / NUMBERS_FILE
    numbers = api.evaluate(config, args.model, split=args.split, samples=args.samples, out=out,
                           numbers_out=numbers_out, seed=args.seed, source=args.config)
    print(format_table(numbers))
    print(f"samples: {out}\nnumbers: {numbers_out}")
    return 0





def cmd_train_reward(args) -> int:
    from . import api
    from .config.train_reward import load_train_reward_config

    config = load_train_reward_config(args.config, args.overrides)

    def progress(entry: dict) -> None:
        accuracy = f", train pair accuracy {entry['accuracy']:.3f}" if "accuracy" in entry else ""
        print(f"epoch {int(entry['epoch'])}/{config.train.epochs}: loss {entry['loss']:.4f}{accuracy}", flush=True)

    outcome = api.train_reward(config, overwrite=args.overwrite, source=args.config, progress=progress)
    metrics = outcome.result.metrics
    kind = "preference pairs" if metrics["kind"] == "pairs" else "labelled responses"
    print(f"data: {metrics['train_size']} {kind} for training, {metrics['held_out_size']} held out "
          f"({outcome.data.source})")
    for split, name in (("held_out", "held-out"), ("train", "train")):
        accuracy = metrics[f"{split}_accuracy"]
        line = f"{name} pair accuracy: " + (f"{accuracy:.4f}" if accuracy is not None else "n/a")
        kinds = [(k.split("/", 1)[1], v) for k, v in metrics.items() if k.startswith(f"{split}_accuracy/")]
        if kinds:  # pairs, by what the rejected response differs by
            line += " (" + ", ".join(f"{k} {v:.4f}" if v is not None else f"{k} n/a" for k, v in kinds) + ")"
        if metrics["kind"] == "labels" and metrics[f"{split}_mse"] is not None:
            line += f", {name} MSE: {metrics[f'{split}_mse']:.4f}"
        print(line)
    norm = outcome.normalization
    if norm is not None:
        print(f"normalisation: gain {norm.gain:.6g}, bias {norm.bias:.6g} (raw mean {norm.raw_mean:.6g}, "
              f"std {norm.raw_std:.6g} over {norm.count} responses; {norm.source})")
    print(f"saved reward model: {outcome.path}")
    return 0


def cmd_demo(args) -> int:
    from .commands.demo import run_demo
    from .runtime.loop import Interrupted

    seeds = demo_seeds(args)
    try:
        if args.env is None:
            out = args.out or ("runs/demo-learned-reward" if args.learned_reward else "runs/demo")
            run_demo(out, quick=args.quick, overwrite=args.overwrite, seeds=seeds, learned_reward=args.learned_reward)
        else:
            from .commands.env_demo import run_env_demo

            run_env_demo(args.env, args.out or f"runs/demo-{args.env}", quick=args.quick, overwrite=args.overwrite,
                         seed=seeds[0])
    except Interrupted as stop:  # SIGINT/SIGTERM in its SFT or PPO stage: stopped at a safe point, as train does
        print(f"ppo-core: demo stopped by {stop.signal_name}; checkpoint {stop.checkpoint}; run it again with "
              f"--overwrite to start over", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def demo_seeds(args) -> list[int]:
    """The demo's seeds from ``--seeds`` (or ``--seed``), each checked before any work starts."""
    if args.seed is not None and args.seeds is not None:
        raise UserError("demo: pass --seed N or --seeds N ..., not both")
    seeds = args.seeds or [0 if args.seed is None else args.seed]
    for seed in seeds:
        check_seed("demo", seed)
    if len(set(seeds)) != len(seeds):
        raise UserError(f"demo: --seeds names a seed twice: {' '.join(map(str, seeds))}")
    if args.env is not None and (len(seeds) > 1 or args.learned_reward):
        raise UserError(f"demo: --env runs one seed with its environment's rewards; leave out "
                        f"{'--learned-reward' if args.learned_reward else '--seeds with more than one seed'}")
    return seeds


COMMANDS = {"demo": cmd_demo, "train": cmd_train, "plugins": cmd_plugins, "config": cmd_config, "init-model": cmd_init_model,
            "sft": cmd_sft, "eval": cmd_eval, "train-reward": cmd_train_reward}

def quiet_transformers() -> None:
    """Our own progress output replaces transformers' per-file bars and advisory warnings (set before
    transformers is imported, so that a config error costs no import)."""
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command not in ("plugins", "config"):
        quiet_transformers()
    try:
        if args.command not in ("train", "plugins", "config"):
            from .runtime.distributed import single_process_only

            single_process_only(f"ppo-core {args.command}")
        return COMMANDS[args.command](args)
    except UserError as error:
        return report_user_error(error)
    except KeyboardInterrupt:
        print("ppo-core: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def report_user_error(error: UserError) -> int:
    """A user's mistake as one line on stderr, and the exit status. A torchrun rank leaves at once: the other ranks
    stop too, and destroying the process group at exit, or gloo's threads at teardown, can abort the process
    ("terminate called without an active exception", SIGABRT) instead of exiting with this status. What the run
    wrote was closed on the way here (atomic writes, context managers)."""
    print(f"ppo-core: error: {error}", file=sys.stderr)
    dist = sys.modules.get("torch.distributed")  # only a training run imports it and joins a process group
    if dist is not None and dist.is_available() and dist.is_initialized():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_USER_ERROR)
    return EXIT_USER_ERROR


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
