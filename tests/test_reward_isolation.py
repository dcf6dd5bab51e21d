"""Rewards in worker processes (``isolation: process``): a reward that hangs, exits, crashes, is killed, mutates
its samples, moves the working directory or answers with a dict is a fault of that reward, handled by its
``on_error``; the next batch goes to a fresh worker; no worker outlives its composer.

The rewards are defined at the top level of this module, so a worker process imports them from here.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from pytest import approx

from ppo_core import Reward, hookimpl
from ppo_core.config import RewardConfig
from ppo_core.errors import PluginError, RewardError
from ppo_core.plugin.contract import RunContext
from ppo_core.plugin.loading import load_plugins
from ppo_core.rewards.composer import build_composer
from ppo_core.rewards.isolation import IsolatedReward

PLUGIN = "isolation_test"


class Hangs(Reward):
    name = "hangs"

    def __call__(self, samples):
        if any(sample.fields.get("hang") for sample in samples):
            time.sleep(600)
        return [1.0] * len(samples)


class Exits(Reward):
    """``sys.exit(fields["exit"])`` on a batch whose first sample carries it."""

    name = "exits"

    def __call__(self, samples):
        if "exit" in samples[0].fields:
            sys.exit(samples[0].fields["exit"])
        return [1.0] * len(samples)


class HardExit(Reward):
    name = "hard_exit"

    def __call__(self, samples):
        os._exit(7)


class Interrupts(Reward):
    name = "interrupts"

    def __call__(self, samples):
        raise KeyboardInterrupt


class Segfaults(Reward):
    name = "segfaults"

    def __call__(self, samples):
        return [float(ctypes.string_at(0)[0])] * len(samples)  # reads address 0: SIGSEGV


class KillsItself(Reward):
    """SIGKILL of its own process: what the out-of-memory killer does."""

    name = "kills_itself"

    def __call__(self, samples):
        os.kill(os.getpid(), signal.SIGKILL)


class Mutates(Reward):
    """Empties the samples list it was given, then scores nothing: the other rewards must not notice."""

    name = "mutates"

    def __call__(self, samples):
        count = len(samples)
        samples.clear()
        return [0.0] * count


class Counts(Reward):
    name = "counts"

    def __call__(self, samples):
        return [float(len(samples))] * len(samples)


class MovesAway(Reward):
    name = "moves_away"

    def __call__(self, samples):
        os.chdir("/")
        return [1.0] * len(samples)


class AnswersDict(Reward):
    name = "answers_dict"

    def __call__(self, samples):
        return {float(i): 1.0 for i in range(len(samples))}


class Gated(Reward):
    """Answers len(samples) for each sample once the file ``fields["gate"]`` exists."""

    name = "gated"

    def __call__(self, samples):
        while not Path(samples[0].fields["gate"]).exists():
            time.sleep(0.01)
        return [float(len(samples))] * len(samples)


class Pid(Reward):
    name = "pid"

    def __call__(self, samples):
        return [float(os.getpid())] * len(samples)


REWARD_CLASSES = [Hangs, Exits, HardExit, Interrupts, Segfaults, KillsItself, Mutates, Counts, MovesAway,
                  AnswersDict, Gated, Pid]


@hookimpl
def register_rewards(register):
    for cls in REWARD_CLASSES:
        register(cls)


@pytest.fixture
def registry(make_plugin):
    plugins = load_plugins(extra=[(PLUGIN, make_plugin(register_rewards=register_rewards))], use_entry_points=False)
    try:
        yield plugins.registry
    finally:
        plugins.manager.unregister(name=PLUGIN)


@pytest.fixture
def compose(registry):
    built = []
    earlier = set(worker_processes())  # workers of other tests' composers, left to garbage collection

    def make(*configs: dict):
        built.append(build_composer([RewardConfig(**config) for config in configs], registry, RunContext()))
        return built[-1]

    try:
        yield make
    finally:
        for composer in built:
            composer.close()
        assert set(worker_processes()) - earlier == set(), "a worker outlived its composer"


def worker_processes() -> list[int]:
    """Live (not zombie) worker processes: children of this process started by multiprocessing's spawn."""
    children = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            children += (task / "children").read_text().split()
        except FileNotFoundError:  # a thread that ended since the listing (pytest-xdist's run their own)
            continue
    alive = []
    for pid in children:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"spawn_main" in command and "State:\tZ" not in status:  # not the resource tracker
            alive.append(int(pid))
    return alive


@pytest.fixture
def samples(make_sample):
    def make(size: int = 3, **fields):
        return [make_sample(prompt=f"prompt {i}", response=f"r{i}", **fields) for i in range(size)]

    return make


FAULTS = {
    # id: (reward config, sample fields, what the error must say)
    "hang": ({"name": "hangs", "timeout_s": 0.5}, {"hang": True}, ["did not answer within timeout_s=0.5"]),
    "sys-exit-0": ({"name": "exits"}, {"exit": 0}, ["called sys.exit(0)"]),
    "sys-exit-3": ({"name": "exits"}, {"exit": 3}, ["called sys.exit(3)"]),
    "os-exit": ({"name": "hard_exit"}, {}, ["exited with status 7"]),
    "keyboard-interrupt": ({"name": "interrupts"}, {}, ["raised KeyboardInterrupt"]),
    "segfault": ({"name": "segfaults"}, {}, ["died from signal SIGSEGV"]),
    "sigkill": ({"name": "kills_itself"}, {}, ["died from signal SIGKILL", "out-of-memory"]),
    "dict": ({"name": "answers_dict"}, {}, ["returned dict, not a sequence of 3 floats"]),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_fault_in_the_worker_names_plugin_reward_and_batch(fault, compose, samples):
    config, fields, expected = FAULTS[fault]
    composer = compose(config, {"name": "counts"})
    started = time.monotonic()
    with pytest.raises(RewardError) as raised:
        composer(samples(**fields))
    assert time.monotonic() - started < 30
    message = str(raised.value)
    for text in [f"reward '{config['name']}'", f"plugin '{PLUGIN}'", "on a batch of 3 samples", *expected]:
        assert text in message, f"{text!r} missing from: {message}"


@pytest.mark.parametrize("fault", list(FAULTS))
def test_on_error_skip_survives_the_fault_and_the_next_batch_is_scored(fault, compose, samples):
    config, fields, _ = FAULTS[fault]
    composer = compose({**config, "on_error": "skip"}, {"name": "counts"})
    failed = composer(samples(**fields))
    assert failed.stats[f"reward/{config['name']}/errors"] == 1.0
    assert failed.totals == approx([3.0, 3.0, 3.0])  # counts alone
    if fault in ("hang", "sys-exit-0", "sys-exit-3"):  # these rewards answer a harmless batch
        healthy = composer(samples())
        assert healthy.stats[f"reward/{config['name']}/errors"] == 0.0
        assert healthy.totals == approx([4.0, 4.0, 4.0])


def test_a_dead_worker_is_replaced_by_a_fresh_one(compose, samples):
    composer = compose({"name": "pid", "on_error": -1.0})
    first = composer(samples(1)).totals[0]
    os.kill(int(first), signal.SIGKILL)  # from outside, between two batches
    assert composer(samples(1)).totals == [-1.0]  # the batch that finds it dead
    second = composer(samples(1)).totals[0]
    assert second > 0 and second != first and first != os.getpid()


def test_each_reward_scores_its_own_copy_of_the_samples(compose, samples):
    composer = compose({"name": "mutates"}, {"name": "counts"})
    batch = samples(4)
    assert composer(batch).values["counts"] == [4.0] * 4  # mutates emptied its copy, not this one
    assert len(batch) == 4


@pytest.mark.parametrize("isolation", ["process", "none"])
def test_a_reward_cannot_move_the_runs_working_directory(compose, samples, isolation, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    composer = compose({"name": "moves_away", "isolation": isolation})
    composer(samples())
    if isolation == "process":
        assert Path.cwd() == tmp_path
    else:  # in process a reward shares everything; this is what `isolation: process` is for
        assert Path.cwd() == Path("/")


def test_the_worker_runs_the_reward_in_another_process(compose, samples):
    composer = compose({"name": "pid"}, {"name": "counts", "isolation": "none"})
    assert isinstance(composer.terms[0].reward, IsolatedReward)
    assert composer(samples(2)).values["pid"][0] != float(os.getpid())


def test_a_reward_class_a_worker_cannot_import_is_a_plugin_error_naming_the_way_out(registry):
    local = type("Local", (Reward,), {"name": "local", "__call__": lambda self, samples: [0.0] * len(samples)})
    registry.register("reward", local, PLUGIN)
    earlier = set(worker_processes())
    with pytest.raises(PluginError) as raised:
        build_composer([RewardConfig(name="local")], registry, RunContext())
    message = str(raised.value)
    assert f"reward 'local' (plugin '{PLUGIN}')" in message and "isolation: none" in message
    assert set(worker_processes()) <= earlier  # no worker was started
    with build_composer([RewardConfig(name="local", isolation="none")], registry, RunContext()) as composer:
        assert composer.terms[0].reward.name == "local"


def test_in_process_a_hung_reward_times_out_without_holding_the_process(compose, samples):
    composer = compose({"name": "hangs", "isolation": "none", "timeout_s": 0.2, "on_error": "skip"})
    assert composer(samples(hang=True)).stats["reward/hangs/errors"] == 1.0
    # the hung call's thread is a daemon: the interpreter may exit while it sleeps
    assert all(thread.daemon for thread in __import__("threading").enumerate() if thread.name == "ppo-core-reward")


ORPHANED = """
import sys, time
from ppo_core import RunContext
from ppo_core.config import RewardConfig
from ppo_core.plugin.loading import load_plugins
from ppo_core.rewards.composer import build_composer

if __name__ == "__main__":
    composer = build_composer([RewardConfig(name="exact_match")], load_plugins().registry, RunContext())
    print(composer.terms[0].reward._worker.process.pid, flush=True)
    time.sleep(600)
"""


def test_a_worker_exits_when_its_main_process_is_killed(tmp_path):
    import subprocess

    script = tmp_path / "orphaning.py"
    script.write_text(ORPHANED, encoding="utf-8")
    main = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(main.stdout.readline())
        assert Path(f"/proc/{worker}").exists()
    finally:
        main.kill()
        main.wait(30)
    deadline = time.monotonic() + 20
    while is_running(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not is_running(worker), "the worker outlived its SIGKILLed main process"


def is_running(pid: int) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def test_chunks_are_scored_in_the_background_and_composed_as_one_batch(compose, samples, tmp_path):
    gate = tmp_path / "open"
    composer = compose({"name": "gated", "timeout_s": 60}, {"name": "counts", "isolation": "none"})
    chunks = [samples(2, gate=str(gate)), samples(3, gate=str(gate))]
    # start returns while the worker waits for the gate: scoring it synchronously would never see the gate open
    scorings = [composer.start(chunk) for chunk in chunks]
    gate.touch()
    composition = composer.finish(scorings)
    assert composition.values["gated"] == [2.0, 2.0, 3.0, 3.0, 3.0]  # one call per chunk, in the workers
    assert composition.values["counts"] == [5.0] * 5  # in process: one call on the whole batch
    assert composition.totals == approx([7.0, 7.0, 8.0, 8.0, 8.0])


def test_a_fault_in_a_background_chunk_is_raised_by_finish_naming_its_batch(compose, samples):
    composer = compose({"name": "hangs", "timeout_s": 0.5}, {"name": "counts"})
    scorings = [composer.start(samples(2)), composer.start(samples(4, hang=True))]
    with pytest.raises(RewardError) as raised:
        composer.finish(scorings)
    assert "reward 'hangs'" in str(raised.value) and "on a batch of 4 samples" in str(raised.value)
