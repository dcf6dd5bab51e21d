"""Run hooks: callbacks see the run start, every metrics line, checkpoints, evaluations and the end; a callback can
stop a run cleanly (EarlyStopping); loggers are plugins on the hooks; `train.eval_every` evaluates during PPO
without changing the training; the progress bar is tqdm's, plain lines when not a terminal."""

from __future__ import annotations

import io

import pytest
import torch

import ppo_core
from ppo_core import EarlyStopping, Logger, hookimpl
from ppo_core.errors import ConfigError, PluginError
from ppo_core.runtime.metrics import Progress

TIMING = ("time/", "tokens_per_s")


def letters(samples):
    """Share of the letter a: trivially learnable, so the updates differ from one another."""
    return [sample.response.count("a") / max(len(sample.response), 1) for sample in samples]


def config(model, run_dir, **train) -> dict:
    return {
        "model": {"path": str(model)},
        "data": {"dataset": "reverse", "options": {"size": 64, "eval_size": 6}},
        "rewards": [{"name": "letters", "normalize": True}],
        "ppo": {"rollout_batch_size": 8, "minibatch_size": 8, "epochs": 1},
        "generation": {"max_new_tokens": 6},
        "optim": {"lr": 1e-3, "schedule": "constant"},
        "train": {"updates": 3, "output_dir": str(run_dir), "progress": "none", "threads": 1, **train},
    }


class Recorder:
    """Implements every run hook and writes down what it saw."""

    def __init__(self):
        self.events = []

    @hookimpl
    def on_run_start(self, run):
        self.events.append(("start", run.command, run.total))

    @hookimpl
    def on_update_end(self, run, step, metrics):
        self.events.append(("update", step, "reward/mean" in metrics, any(k.startswith("eval/") for k in metrics)))

    @hookimpl
    def on_checkpoint(self, run, step, path):
        self.events.append(("checkpoint", step, path.name, path.is_dir()))

    @hookimpl
    def on_eval(self, run, step, metrics):
        self.events.append(("eval", step, sorted(metrics)[:2]))

    @hookimpl
    def on_run_end(self, run, final_model):
        self.events.append(("end", final_model.name if final_model else None))


class ListLogger(Logger):
    """A logger plugin keeping what it was given (the base class turns hooks into start/log/finish)."""

    name = "in_memory"
    seen: list = []

    def start(self, run):
        self.seen.append(("start", run.command))

    def log(self, metrics, step):
        self.seen.append((step, "eval" if any(k.startswith("eval/") for k in metrics) else "update"))

    def finish(self, final_model):
        self.seen.append(("finish", final_model is not None))


class ListLoggerPlugin:
    @hookimpl
    def register_loggers(self, register):
        register(ListLogger)


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    """The same PPO run with and without `train.eval_every` (and a checkpoint, a logger and a recorder)."""
    root = tmp_path_factory.mktemp("callbacks")
    threads = torch.get_num_threads()
    recorder = Recorder()
    ListLogger.seen = []
    evaluated = ppo_core.train(config(tiny_model_dir, root / "eval", eval_every=2, save_every=2,
                                      loggers=["in_memory"]),
                               rewards=[letters], callbacks=[recorder], plugins=[("list_logger", ListLoggerPlugin())])
    plain = ppo_core.train(config(tiny_model_dir, root / "plain"), rewards=[letters])
    torch.set_num_threads(threads)
    return evaluated, plain, recorder, list(ListLogger.seen)


def test_callbacks_see_every_hook_in_order(runs):
    _evaluated, _plain, recorder, _seen = runs
    eval_keys = ["eval/greedy/eos_rate", "eval/greedy/exact_match"]
    assert recorder.events == [
        ("start", "train", 3),
        ("update", 1, True, False),
        ("eval", 2, eval_keys), ("update", 2, True, True), ("checkpoint", 2, "update-000002", True),
        ("eval", 3, eval_keys), ("update", 3, True, True),
        ("end", "final"),
    ]


def test_a_configured_logger_gets_updates_and_evaluations_once_each(runs):
    *_, seen = runs
    assert seen == [("start", "train"), (1, "update"), (2, "eval"), (2, "update"), (3, "eval"), (3, "update"),
                    ("finish", True)]


def test_evaluation_during_ppo_logs_eval_metrics_and_changes_nothing_else(runs):
    evaluated, plain, *_ = runs
    lines = evaluated.metrics
    assert [sorted(k for k in line if k.startswith("eval/")) != [] for line in lines] == [False, True, True]
    for decoding in ("greedy", "sampled"):
        for number in ("exact_match", "reward_total", "length_mean", "eos_rate", "reward/letters"):
            assert isinstance(lines[1][f"eval/{decoding}/{number}"], float)

    def training(line):
        return {k: v for k, v in line.items() if not k.startswith(("eval/", *TIMING))}

    # the evaluation reuses the run's rewards (normalize: true) and sampler, but puts their state back
    assert [training(line) for line in lines] == [training(line) for line in plain.metrics]


def test_a_callback_stops_the_run_cleanly_after_the_current_update(tiny_model_dir, tmp_path, capsys):
    class StopAtTwo:
        @hookimpl
        def on_update_end(self, run, step):
            if step == 2:
                run.request_stop("enough at 2")

    threads = torch.get_num_threads()
    result = ppo_core.train(config(tiny_model_dir, tmp_path / "run", updates=5), rewards=[letters],
                            callbacks=[StopAtTwo()])
    torch.set_num_threads(threads)
    assert result.stopped_early == "enough at 2"
    assert [line["update"] for line in result.metrics] == [1, 2]
    assert (result.final_model / "model.safetensors").is_file()
    assert "ppo-core: enough at 2; stopping after this update" in capsys.readouterr().err


def test_an_unknown_logger_is_a_config_error_naming_the_field(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"train\.loggers\.0\.name: unknown logger 'nope'; known loggers: "):
        ppo_core.train(config(tiny_model_dir, tmp_path / "run", loggers=["nope"]), rewards=[letters])
    assert not (tmp_path / "run" / "config.yaml").exists()  # it failed before anything was written


def test_a_callback_with_a_misspelt_hook_is_a_one_line_error(tiny_model_dir, tmp_path):
    class Misspelt:
        @hookimpl
        def on_update_ended(self, run):
            pass

    with pytest.raises(PluginError, match=r"^callback Misspelt: unknown hook 'on_update_ended'"):
        ppo_core.train(config(tiny_model_dir, tmp_path / "run"), rewards=[letters], callbacks=[Misspelt()])


@pytest.mark.parametrize("mode, min_delta, values, stops_at", [
    ("max", 0.0, [1.0, 2.0, 2.0, 1.5, 3.0], 3),   # two lines without improvement on the best (2.0)
    ("min", 0.0, [3.0, 2.0, 1.0, 0.5, 0.4], None),
    ("min", 0.0, [3.0, 2.0, 2.5, 2.0, 1.0], 3),
    ("max", 0.1, [1.0, 1.05, 1.08, 1.5], 2),      # 1.05 and 1.08 are no improvement on 1.0 by more than 0.1
])
def test_early_stopping_on_a_metric_that_stops_improving(mode, min_delta, values, stops_at):
    stopping = EarlyStopping(metric="m", mode=mode, patience=2, min_delta=min_delta)
    reasons = [stopping.reason(value) for value in values]
    first = next((i for i, reason in enumerate(reasons) if reason), None)
    assert first == stops_at
    if stops_at is not None:
        assert reasons[first].startswith("m did not improve on ")


def test_early_stopping_at_a_threshold_and_on_eval_metrics(tiny_model_dir):
    from ppo_core.plugin.callbacks import RunInfo

    run = RunInfo("train", tiny_model_dir, None, 10)
    stopping = EarlyStopping(metric="eval/greedy/exact_match", threshold=0.5, patience=None)
    stopping.on_update_end(run, {"eval/greedy/exact_match": 0.9})  # an update line: not watched for eval/*
    assert run.stop_reason is None
    stopping.on_eval(run, {"eval/greedy/exact_match": 0.25})
    assert run.stop_reason is None
    stopping.on_eval(run, {"eval/greedy/exact_match": 0.5})
    assert run.stop_reason == "early stopping: eval/greedy/exact_match = 0.5 reached the threshold 0.5"
    with pytest.raises(ValueError, match="give a patience, a threshold or both"):
        EarlyStopping(patience=None)


def test_sft_calls_the_run_hooks_too(tiny_model_dir, tmp_path):
    recorder = Recorder()
    data = config(tiny_model_dir, tmp_path / "sft")
    data["sft"] = {"steps": 2, "batch_size": 4, "save_every": 1}
    threads = torch.get_num_threads()
    result = ppo_core.sft(data, rewards=[letters], callbacks=[recorder])
    torch.set_num_threads(threads)
    assert [event[:2] for event in recorder.events] == [
        ("start", "sft"), ("update", 1), ("checkpoint", 1), ("update", 2), ("checkpoint", 2), ("end", "final")]
    assert [line["step"] for line in result.metrics] == [1, 2]


def test_progress_is_a_tqdm_bar_on_a_terminal_and_plain_lines_otherwise():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal, pipe = Terminal(), io.StringIO()
    for stream in (terminal, pipe):
        progress = Progress(3, "auto", stream=stream)
        for done in (1, 2, 3):
            progress.update(done, {"reward/mean": done / 4, "kl": 0.5})
        progress.close()
    bar = terminal.getvalue()
    assert "\r" in bar and "3/3" in bar and "reward/mean=0.75 kl=0.5" in bar and "100%" in bar
    lines = pipe.getvalue().splitlines()
    assert len(lines) == 3 and "\r" not in pipe.getvalue()
    assert lines[2].startswith("update 3/3 (") and lines[2].endswith("s/it) reward/mean=0.75 kl=0.5")
