"""The fault catalogue's machinery, shared by tests/test_fault_catalogue*.py.

A :class:`Fault` is one mistake -- in a config, a data file, a plugin, a model directory, a run directory or the
command line -- and the fragments the one error line must name. :func:`check_fault_in_process` runs it through
``ppo_core.cli.main([...])`` in-process and asserts what every case must show: exit status 2, ONE line
``ppo-core: error: ...`` on stderr naming the file, field or plugin at fault, no traceback, a bounded time
(:data:`CASE_SECONDS`), and every file that was there before (the user's, an earlier run's, the model's)
unchanged, byte for byte (:func:`snapshot`). :func:`run_cli` runs a case as a real ``python -m ppo_core.cli``
process, for hangs, exits and kills. Cases write their own tiny model (once per module), configs, data files
and throwaway plugin distributions (``*.dist-info`` on ``sys.path``, discovered through their entry point like
installed ones).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytest
import yaml

from ppo_core.cli import main
from ppo_core.plugin.loading import ALLOW_ENV, BLOCK_ENV

DELETE = object()  # in a Fault's `change`: remove this key from the base config
REMOVED = "<removed>"  # in a Fault's `files`: delete this (existing) file
TRUNCATED = "<truncated>"  # in a Fault's `files`: cut this (existing) file to half its bytes

# The base run: every case is this config with its fault applied, so a case that gets past its fault is cheap.
BASE: dict[str, Any] = {
    "model": {"path": "{model}"},
    "data": {"dataset": "reverse", "options": {"size": 8, "eval_size": 4}},
    "rewards": [{"name": "exact_match"}],
    "ppo": {"rollout_batch_size": 4, "minibatch_size": 2, "epochs": 1},
    "generation": {"max_new_tokens": 4},
    "train": {"updates": 1, "threads": 1, "output_dir": "{tmp}/run", "progress": "none"},
    "sft": {"steps": 1, "batch_size": 2},
}

# ---- throwaway plugins (PLUGINS): installed as a distribution for the case that names one ---------------------
# One reward per way a reward can misbehave while scoring a batch.
FAULTY_REWARDS = '''
    import time

    from ppo_core import hookimpl
    from ppo_core import Reward


    class Raises(Reward):
        name = "raises"

        def __call__(self, samples):
            raise ValueError("kaboom")


    class NotANumber(Reward):
        name = "not_a_number"

        def __call__(self, samples):
            return [float("nan")] * len(samples)


    class WrongLength(Reward):
        name = "wrong_length"

        def __call__(self, samples):
            return [1.0] * (len(samples) + 1)


    class WrongType(Reward):
        name = "wrong_type"

        def __call__(self, samples):
            return ["high"] * len(samples)


    class AbstainsAll(Reward):
        name = "abstains_all"

        def __call__(self, samples):
            return [None] * len(samples)


    class Sleeps(Reward):
        name = "sleeps"

        def __call__(self, samples):
            time.sleep(1.5)
            return [0.0] * len(samples)


    class FailsToStart(Reward):
        name = "fails_to_start"

        def __init__(self, options, context):
            raise RuntimeError("no licence for this reward")


    @hookimpl
    def register_rewards(register):
        for reward in (Raises, NotANumber, WrongLength, WrongType, AbstainsAll, Sleeps, FailsToStart):
            register(reward)
'''

BROKEN_AT_IMPORT = '''
    raise ImportError("cannot import name 'frobnicate' from 'somewhere'")
'''

@dataclass(frozen=True)
class Fault:
    """One mistake and what the error line must say about it.

    Strings may hold ``{tmp}`` (the case's own directory), ``{model}`` (the tiny model) and ``{config}``
    (the config file the case writes); ``expect`` fragments are matched after the same substitution.
    """

    id: str
    expect: tuple[str, ...]
    change: dict = field(default_factory=dict)  # deep-merged into BASE; DELETE removes a key
    command: str = "train"  # may be two words: "config check"
    args: tuple[str, ...] = ()  # after the config path
    text: Optional[str] = None  # the config file's raw text instead of BASE + change
    name: str = "bad.yaml"  # the config file's name (its suffix picks YAML or JSON)
    files: dict = field(default_factory=dict)  # more files in {tmp}: name -> text, bytes, "@path" (a copy of
    #      path), a name ending in "/" (an empty directory), REMOVED or TRUNCATED (an existing file: deleted, or
    #      cut to half its bytes); written after run_dir, so that they can damage the previous run
    plugin: Optional[str] = None  # a key of PLUGINS: installed as a throwaway distribution for this case
    env: dict = field(default_factory=dict)
    run_dir: Optional[str] = None  # "previous": {tmp}/run holds a finished run with checkpoints at updates 1, 2
    argv: Optional[tuple[str, ...]] = None  # the whole command line instead of COMMAND CONFIG ARGS
    absent: tuple[str, ...] = ()  # files the failed command must not have created (code it must not have run)
    locked: bool = False  # another live process holds {tmp}/run's lock; "{holder}" in `expect` is its PID
    present: tuple[str, ...] = ()  # files the failed command must have written (where they belong)


def rewards(*entries: dict) -> dict:
    return {"rewards": list(entries)}


def jsonl(*lines: Any) -> str:
    return "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)


def on_jsonl(path: str = "{tmp}/data.jsonl", **data: Any) -> dict:
    return {"data": {"dataset": "jsonl", "options": {"path": path, "size": DELETE, "eval_size": DELETE}, **data}}


GOOD_LINE = {"prompt": "reverse: abc =", "solution": "cba"}


def isolated(*entries: dict, **more: Any) -> dict:
    return {"rewards": list(entries), **more}


# Rewards that hang, exit, crash, are killed, answer with a dict, mutate their samples or move the working
# directory: what only a worker process (isolation: process) survives.
ISOLATION_REWARDS = '''
    import ctypes
    import os
    import signal
    import sys
    import tempfile
    import time

    from ppo_core import Reward, hookimpl


    class Hangs(Reward):
        name = "hangs"

        def __call__(self, samples):
            time.sleep(600)


    class ExitsZero(Reward):
        name = "exits_zero"

        def __call__(self, samples):
            sys.exit(0)


    class ExitsThree(Reward):
        name = "exits_three"

        def __call__(self, samples):
            sys.exit(3)


    class HardExit(Reward):
        name = "hard_exit"

        def __call__(self, samples):
            os._exit(5)


    class Interrupts(Reward):
        name = "interrupts"

        def __call__(self, samples):
            raise KeyboardInterrupt


    class Segfaults(Reward):
        name = "segfaults"

        def __call__(self, samples):
            return [float(ctypes.string_at(0)[0])] * len(samples)


    class KillsItself(Reward):
        name = "kills_itself"

        def __call__(self, samples):
            os.kill(os.getpid(), signal.SIGKILL)


    class AnswersDict(Reward):
        name = "answers_dict"

        def __call__(self, samples):
            return {float(i): 1.0 for i in range(len(samples))}


    class Mutates(Reward):
        name = "mutates"

        def __call__(self, samples):
            count = len(samples)
            samples.clear()
            return [0.0] * count


    class Sees(Reward):
        name = "sees"

        def __call__(self, samples):
            raise ValueError(f"saw {len(samples)} samples")


    class MovesAway(Reward):
        """Moves to a directory of its own on the first batch; fails on the second."""

        name = "moves_away"
        calls = 0

        def __call__(self, samples):
            self.calls += 1
            if self.calls == 1:
                os.chdir(tempfile.mkdtemp())
                return [0.0] * len(samples)
            raise ValueError(f"second batch, working in {os.getcwd()}")


    @hookimpl
    def register_rewards(register):
        for reward in (Hangs, ExitsZero, ExitsThree, HardExit, Interrupts, Segfaults, KillsItself, AnswersDict,
                       Mutates, Sees, MovesAway):
            register(reward)
'''

EXITS_AT_IMPORT = '''
    import sys

    sys.exit(0)
'''

# Rewards that fail while they start (in their worker, or in the main process with isolation: none).
FAILING_STARTS = '''
    import sys
    import time

    from ppo_core import Reward, hookimpl


    class ExitsInInit(Reward):
        name = "exits_in_init"

        def __init__(self, options, context):
            sys.exit(4)


    class HangsInInit(Reward):
        name = "hangs_in_init"

        def __init__(self, options, context):
            time.sleep(600)


    @hookimpl
    def register_rewards(register):
        for reward in (ExitsInInit, HangsInInit):
            register(reward)
'''

# Datasets that misbehave: their code always runs in the main process.
FAULTY_DATASETS = '''
    import sys

    from ppo_core import Dataset, hookimpl


    class ExitsInInit(Dataset):
        name = "exits_in_init"

        def __init__(self, options, context):
            sys.exit(6)


    class RaisesInRecords(Dataset):
        name = "raises_in_records"

        def records(self, split):
            raise OSError("the disk is on fire")


    class YieldsStrings(Dataset):
        name = "yields_strings"

        def records(self, split):
            yield from ["reverse: abc ="] * 8


    @hookimpl
    def register_datasets(register):
        for dataset in (ExitsInInit, RaisesInRecords, YieldsStrings):
            register(dataset)
'''

# Environments that misbehave, each one way, from the `batch`-th batch of episodes (counted by reset calls) and
# the `turn`-th turn on: in their worker process (isolation: process, the default) or in the main one.
FAULTY_ENVIRONMENTS = '''
    import ctypes
    import os
    import sys
    import threading
    import time

    from pydantic import BaseModel

    from ppo_core import EnvReset, EnvStep, Environment, hookimpl


    class GameOptions(BaseModel):
        batch: int = 1  # the fault strikes from this batch of episodes on
        turn: int = 1  # ... and from this turn on
        first_batch_succeeds: bool = False  # never_done: the first batch's episodes end at once, solved


    class Plays(Environment):
        """A game that asks for another try and ends after turn 2; each subclass breaks it one way."""

        name = "plays"
        Options = GameOptions
        batches = 0

        def reset(self, records):
            self.batches += 1
            start = self.broken_start if self.batches >= self.options.batch else self.start
            return start(records)

        def step(self, states, responses):
            broken = self.batches >= self.options.batch and states[0]["turn"] + 1 >= self.options.turn
            return (self.broken_answer if broken else self.answer)(states, responses)

        def start(self, records):
            return EnvReset(states=[{"turn": 0} for _ in records], prompts=[r.prompt_text for r in records])

        def answer(self, states, responses):
            states = [{"turn": s["turn"] + 1} for s in states]
            return EnvStep(states=states, observations=[" again:"] * len(states), rewards=[0.5] * len(states),
                           done=[s["turn"] >= 2 for s in states])

        broken_start, broken_answer = start, answer


    class StepRaises(Plays):
        name = "step_raises"

        def broken_answer(self, states, responses):
            raise RuntimeError("the board is on fire")


    class ResetRaises(Plays):
        name = "reset_raises"

        def broken_start(self, records):
            raise OSError("no boards left")


    class StepHangs(Plays):
        name = "step_hangs"

        def broken_answer(self, states, responses):
            time.sleep(600)


    class StepExits(Plays):
        name = "step_exits"

        def broken_answer(self, states, responses):
            sys.exit(3)


    class StepHardExit(Plays):
        name = "step_hard_exit"

        def broken_answer(self, states, responses):
            os._exit(5)


    class StepSegfaults(Plays):
        name = "step_segfaults"

        def broken_answer(self, states, responses):
            return ctypes.string_at(0)


    class FewerStates(Plays):
        name = "fewer_states"

        def broken_answer(self, states, responses):
            return self.answer(states[:-1], responses[:-1])


    class FewerObservations(Plays):
        name = "fewer_observations"

        def broken_answer(self, states, responses):
            n = len(states)
            return EnvStep(states=states, observations=[None] * (n - 1), rewards=[None] * n, done=[True] * n)


    class LiveState(Plays):
        name = "live_state"

        def broken_start(self, records):
            return EnvReset(states=[threading.Lock() for _ in records], prompts=[r.prompt_text for r in records])


    class NanReward(Plays):
        name = "nan_reward"

        def broken_answer(self, states, responses):
            n = len(states)
            return EnvStep(states=states, observations=[None] * n, rewards=[float("nan")] * n, done=[True] * n)


    class FailsToStart(Plays):
        name = "fails_to_start"

        def __init__(self, options, context):
            raise RuntimeError("no licence for this game")


    class NeverDone(Plays):
        name = "never_done"

        def answer(self, states, responses):
            n = len(states)
            if self.options.first_batch_succeeds and self.batches == 1:
                return EnvStep(states=states, observations=[None] * n, rewards=[1.0] * n, done=[True] * n,
                               success=[True] * n)
            return EnvStep(states=states, observations=[" again:"] * n, rewards=[None] * n, done=[False] * n)

        broken_answer = answer


    class Floods(Plays):
        """Answers every turn with an observation longer than the model's whole context."""

        name = "floods"

        def broken_answer(self, states, responses):
            n = len(states)
            return EnvStep(states=states, observations=["x" * 1000] * n, rewards=[0.0] * n, done=[False] * n)


    class LongFirstPrompt(Plays):
        name = "long_first_prompt"

        def broken_start(self, records):
            return EnvReset(states=[{"turn": 0} for _ in records], prompts=["y" * 500 for _ in records])


    class OwnRecordsRaise(Plays):
        """Makes its own episodes (no data.dataset needed), or would."""

        name = "own_records_raise"

        def records(self, split):
            raise OSError("the deck is gone")


    class OwnRecordsExit(Plays):
        name = "own_records_exit"

        def records(self, split):
            sys.exit(7)


    @hookimpl
    def register_environments(register):
        for environment in (StepRaises, ResetRaises, StepHangs, StepExits, StepHardExit, StepSegfaults, FewerStates,
                            FewerObservations, LiveState, NanReward, FailsToStart, NeverDone, Floods, LongFirstPrompt,
                            OwnRecordsRaise, OwnRecordsExit):
            register(environment)
'''

PLUGINS = {"faulty": FAULTY_REWARDS, "broken": BROKEN_AT_IMPORT, "isolation": ISOLATION_REWARDS,
           "exits_at_import": EXITS_AT_IMPORT, "failing_starts": FAILING_STARTS, "faulty_data": FAULTY_DATASETS,
           "faulty_env": FAULTY_ENVIRONMENTS}
RUN_MARKER = "PPO_CORE_FAULT_RUN"

# a case that takes longer hangs: a config or data mistake must be found before any long work starts
CASE_SECONDS = 120


# ---- fixtures ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from ppo_core.modeling.tiny import init_model

    return init_model(tmp_path_factory.mktemp("fault-model") / "model", "tiny", seed=0)


@pytest.fixture(scope="module")
def previous_run(tmp_path_factory, tiny_model) -> Path:
    """A finished two-update run with checkpoints: what the run-directory cases must leave intact."""
    root = tmp_path_factory.mktemp("fault-previous")
    config = substitute(merge(BASE, {"train": {"updates": 2, "save_every": 1}}), tmp=root, model=tiny_model)
    (root / "run.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch, as_a_cli_process():
        for variable in (ALLOW_ENV, BLOCK_ENV):  # module scope: conftest's per-test clean-up has not run yet
            patch.delenv(variable, raising=False)
        assert main(["train", str(root / "run.yaml")]) == 0
    assert (root / "run" / "metrics.jsonl").stat().st_size > 0
    assert (root / "run" / "checkpoints" / "update-000002").is_dir()
    return root / "run"


@contextmanager
def time_limit(seconds: int):
    """Fail a case that runs longer than ``seconds`` (SIGALRM: the CLI only handles SIGINT and SIGTERM)."""

    def expire(_signum, _frame):
        raise TimeoutError(f"the case ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@contextmanager
def as_a_cli_process():
    """What the CLI process has that an in-process ``main`` may not: transformers quiet (no progress bars,
    errors only) even when it was imported before ``main`` set its environment. Also puts back torch's thread
    count, which ``train.threads: 1`` changes for the whole process."""
    import torch
    from transformers.utils import logging as hf_logging

    bars, level, threads = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity(), torch.get_num_threads()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()
        hf_logging.set_verbosity(level)
        torch.set_num_threads(threads)


# ---- helpers -------------------------------------------------------------------------------------------------
def merge(base: Any, change: Any) -> Any:
    if isinstance(base, dict) and isinstance(change, dict):
        out = dict(base)
        for key, value in change.items():
            if value is DELETE:
                out.pop(key, None)
            else:
                out[key] = merge(base.get(key), value)
        return out
    return change


def substitute(value: Any, **names: Any) -> Any:
    if isinstance(value, str):
        for name, replacement in names.items():
            value = value.replace("{" + name + "}", str(replacement))
        return value
    if isinstance(value, dict):
        return {key: substitute(item, **names) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(substitute(item, **names) for item in value)
    return value


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file under ``roots``, by content hash: what was written before the case ran."""
    found = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def write_case_file(tmp: Path, name: str, text: Any, names: dict) -> None:
    """One entry of :attr:`Fault.files` (see there)."""
    path = tmp / name
    if name.endswith("/"):
        path.mkdir(parents=True, exist_ok=True)
    elif text == REMOVED:
        path.unlink()
    elif text == TRUNCATED:
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])
    elif isinstance(text, bytes):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text)
    elif text.startswith("@"):  # a copy of an existing file
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(substitute(text[1:], **names), path)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(substitute(text, **names), encoding="utf-8")


def prepare(fault: Fault, tmp: Path, model: Path, previous: Optional[Path], make_distribution,
            monkeypatch) -> list[str]:
    """Write the case's files, install its plugin, set its environment; returns the argv."""
    names = {"tmp": tmp, "model": model, "config": tmp / fault.name}
    if fault.run_dir == "previous":
        shutil.copytree(previous, tmp / "run")
    for name, text in fault.files.items():
        write_case_file(tmp, name, text, names)
    if fault.plugin:
        make_distribution(f"ppo-core-{fault.plugin}", entry_points={fault.plugin: f"ppo_core_fault_{fault.plugin}"},
                          modules={f"ppo_core_fault_{fault.plugin}": PLUGINS[fault.plugin]})
    for variable, value in fault.env.items():
        monkeypatch.setenv(variable, substitute(value, **names))
    if fault.argv is not None:
        return [str(part) for part in substitute(list(fault.argv), **names)]
    config = tmp / fault.name
    if fault.text is not None:
        config.write_text(substitute(fault.text, **names), encoding="utf-8")
    else:
        data = substitute(merge(BASE, fault.change), **names)
        text = json.dumps(data) if config.suffix == ".json" else yaml.safe_dump(data, sort_keys=False)
        config.write_text(text, encoding="utf-8")
    return [*fault.command.split(), str(config), *substitute(list(fault.args), **names)]


def check_error_line(code: int, stdout: str, stderr: str, expected: list[str]) -> str:
    assert "Traceback" not in stdout + stderr, stderr
    assert code == 2, f"exit status {code}, stderr: {stderr!r}"
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr}"
    line = lines[0]
    assert line.startswith("ppo-core: error: "), line
    missing = [fragment for fragment in expected if fragment not in line]
    assert not missing, f"{missing} not in: {line}"
    return line


def processes_marked(marker: str) -> list[int]:
    """Live processes whose environment carries ``RUN_MARKER=marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "status").read_text()
        except OSError:
            continue
        if f"{RUN_MARKER}={marker}".encode() in environ.split(b"\0") and "State:\tZ" not in state:
            found.append(int(entry.name))
    return found


def run_cli(argv: list[str], tmp_path: Path, site: Path, marker: str) -> subprocess.CompletedProcess:
    path = [str(Path(__file__).parents[1]), str(site), os.environ.get("PYTHONPATH")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, path)), RUN_MARKER: marker}
    return subprocess.run([sys.executable, "-m", "ppo_core.cli", *argv], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=240)



# Holds run locks for the cases, one process for the module (its import of ppo_core costs more than a case):
# "hold DIR" takes DIR's run lock as a running `train` would, "release DIR" drops it; each answers "ok".
HOLD_LOCKS = """
import sys
from pathlib import Path
from ppo_core.runtime.rundir import DirectoryLock

held = {}
for line in sys.stdin:
    command, _, directory = line.rstrip("\\n").partition(" ")
    if command == "hold":
        held[directory] = DirectoryLock(Path(directory), "lock")
    else:
        held.pop(directory).release()
    print("ok", flush=True)
"""


class LockHolder:
    """Another live process that holds run locks on request (:data:`HOLD_LOCKS`)."""

    def __init__(self):
        self.process = subprocess.Popen([sys.executable, "-c", HOLD_LOCKS], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)

    def _ask(self, command: str, directory: Path) -> None:
        self.process.stdin.write(f"{command} {directory}\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline().strip() == "ok", f"the lock holder failed to {command} {directory}"

    @contextmanager
    def holding(self, directory: Path):
        """``directory``'s lock held by the other process while the block runs; yields that process's PID."""
        directory.mkdir(parents=True, exist_ok=True)
        self._ask("hold", directory)
        try:
            yield self.process.pid
        finally:
            self._ask("release", directory)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def lock_holder():
    holder = LockHolder()
    yield holder
    holder.stop()


def check_fault_in_process(fault: Fault, tmp: Path, model: Path, request, make_distribution, monkeypatch,
                           capsys) -> str:
    """Run ``fault`` through ``main`` in this process and check everything a case must show; returns the line."""
    previous = request.getfixturevalue("previous_run") if fault.run_dir else None
    monkeypatch.chdir(tmp)
    argv = prepare(fault, tmp, model, previous, make_distribution, monkeypatch)
    names = {"tmp": tmp, "model": model, "config": tmp / fault.name}
    with contextlib.ExitStack() as stack:
        if fault.locked:
            names["holder"] = stack.enter_context(request.getfixturevalue("lock_holder").holding(tmp / "run"))
        before = snapshot(tmp, model)
        capsys.readouterr()
        with as_a_cli_process(), time_limit(CASE_SECONDS):
            code = main(argv)
        out, err = capsys.readouterr()
        line = check_error_line(code, out, err, substitute(list(fault.expect), **names))
        after = snapshot(tmp, model)
    damaged = [path for path, digest in before.items() if after.get(path) != digest]
    assert not damaged, f"changed or removed by a failed command: {damaged}"
    created = [path for path in substitute(list(fault.absent), **names) if Path(path).exists()]
    assert not created, f"created by a failed command: {created}"
    missing = [path for path in substitute(list(fault.present), **names) if not Path(path).exists()]
    assert not missing, f"not written where it belongs: {missing}"
    if fault.run_dir:
        assert (tmp / "run" / "metrics.jsonl").read_bytes() == (previous / "metrics.jsonl").read_bytes()
    return line
