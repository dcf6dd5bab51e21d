"""Rewards (and environments) in worker processes: their code cannot hang, crash or exit the run, nor touch its
state.

Each reward with ``isolation: process`` (the default) lives in one long-lived worker process (multiprocessing
``spawn`` context), started once with the reward's class (pickled by reference: its module must be importable),
its validated options and the run context (the tokenizer pickled by value). Every batch goes over a pipe by
value, so a reward sees its own copy of the samples and its own working directory. The parent waits at most
``timeout_s`` for an answer (``connection.poll``); a worker that times out is killed and a fresh one started,
and one that dies (a segfault, ``os._exit``, the out-of-memory killer) is reported by its exit status and
replaced the same way. The worker runs in its own session (so a Ctrl-C at the terminal reaches the main
process only, which stops the run at a safe point) and exits by itself when its parent is gone; workers still
running at interpreter exit are stopped, grandchildren included.

``run_with_timeout`` is the in-process counterpart (``isolation: none``): the call runs in a daemon thread,
so a hung reward fails the batch without keeping the process alive at exit.
"""

from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.util  # registers multiprocessing's own exit handler before ours (ours runs first)
import os
import pickle
import signal
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from ..errors import PluginError, UserError
from ..plugin.contract import HiddenStateReward, RunContext, Sample, reads_reference_hidden

SPAWN = multiprocessing.get_context("spawn")
GRACE_S = 2.0  # how long a worker asked to stop may take before it is killed
PARENT_CHECK_S = 0.5  # how often a worker checks that the process that started it is still there
START_TIMEOUT_S = 120.0  # how long a worker may take to build its reward (or timeout_s if longer; null: no limit)


class WorkerFault(Exception):
    """A reward's call ended without an answer: a time-out, an exit or a death. Reads after the reward's name."""


# ---- the worker process ------------------------------------------------------------------------------------
def serve(connection, spec: bytes, parent_pid: int) -> None:
    """The worker's main: build the plugin object (a reward or an environment) from ``spec``, then answer
    requests until the pipe closes."""
    if hasattr(os, "setsid"):
        os.setsid()  # its own session: terminal signals go to the main process only; killpg reaches our children
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()
    try:
        reward_class, options, context = pickle.loads(spec)
        reward = reward_class(options, context)
        ready = ("ready", reads_reference_hidden(reward))
    except BaseException as error:  # an import or constructor failure, sys.exit included
        connection.send_bytes(pickle.dumps(("failed", _portable(error))))
        return
    try:
        connection.send_bytes(pickle.dumps(ready))
        while True:
            method, samples, hidden = pickle.loads(connection.recv_bytes())
            connection.send_bytes(_answer(reward, context, method, samples, hidden))
    except (EOFError, OSError):
        return  # the parent closed the pipe (the run is over) or is gone


def _answer(reward, context: RunContext, method: str, samples: list, hidden) -> bytes:
    try:
        if method == "score_hidden":
            answer = reward.score_hidden(samples, hidden.to(context.device))
        elif method == "score":
            answer = reward(samples)
        else:  # another plugin's method (an environment's reset or step): ``samples`` holds its arguments
            answer = getattr(reward, method)(*samples)
    except SystemExit as exit:
        return pickle.dumps(("fault", f"called sys.exit({exit.code!r})"))
    except Exception as error:
        return pickle.dumps(("raised", _portable(error)))
    except BaseException as error:  # KeyboardInterrupt, GeneratorExit... raised by the reward itself
        return pickle.dumps(("fault", f"raised {type(error).__name__}: {error}"))
    try:
        return pickle.dumps(("ok", answer))
    except Exception as error:
        return pickle.dumps(("fault", f"returned {type(answer).__name__}, which cannot be sent back from its "
                                      f"worker process ({type(error).__name__}: {error})"))


def _portable(error: BaseException) -> tuple[str, str, Optional[bytes]]:
    """(type name, message, the pickled exception if it survives a round trip)."""
    try:
        pickled = pickle.dumps(error)
        pickle.loads(pickled)
    except Exception:
        pickled = None
    return type(error).__name__, str(error), pickled


def _exception_from(portable: tuple[str, str, Optional[bytes]]) -> BaseException:
    name, message, pickled = portable
    if pickled is not None:
        try:
            return pickle.loads(pickled)
        except Exception:
            pass
    return type(name, (Exception,), {})(message)  # a stand-in carrying the original type's name


def _exit_with_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(PARENT_CHECK_S)
    os._exit(0)


# ---- the parent's side -------------------------------------------------------------------------------------
@dataclass(eq=False)
class Worker:
    process: Any  # multiprocessing.Process
    connection: Any  # multiprocessing.connection.Connection

    def stop(self, grace_s: float = 0.0) -> None:
        """Close the pipe (an idle worker then exits by itself), wait ``grace_s``, kill what is left."""
        self.connection.close()
        if grace_s and self.process.pid is not None:
            self.process.join(grace_s)
        _kill_session(self.process.pid, reaped=self.process.exitcode is not None)
        self.process.join()
        _LIVE.discard(self)

    def death(self) -> str:
        """Why the worker's pipe closed, from its exit status."""
        self.process.join(GRACE_S)
        code = self.process.exitcode
        if code is None:
            return "closed its pipe without an answer"
        if code < 0:
            name = signal.Signals(-code).name
            why = {"SIGKILL": " (killed from outside, for example by the out-of-memory killer)",
                   "SIGSEGV": " (a crash in native code)", "SIGABRT": " (an abort in native code)"}.get(name, "")
            return f"worker process died from signal {name}{why}"
        return f"worker process exited with status {code} (os._exit or an exit outside the reward's call)"


def _kill_session(pid: Optional[int], reaped: bool) -> None:
    """SIGKILL the worker's session: the worker (unless already reaped) and anything it started."""
    if pid is None:
        return
    try:
        os.killpg(pid, signal.SIGKILL)  # the worker leads its own process group
    except (ProcessLookupError, PermissionError, AttributeError):
        if not reaped:  # it died or was stopped before it could call setsid
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


_LIVE: set[Worker] = set()
_exit_hook_registered = False


def _stop_live_workers() -> None:
    workers = list(_LIVE)
    for worker in workers:
        worker.connection.close()
    deadline = time.monotonic() + GRACE_S
    for worker in workers:
        worker.process.join(max(0.0, deadline - time.monotonic()))
        worker.stop()


def _start_worker(spec: bytes, name: str, kind: str = "reward") -> Worker:
    global _exit_hook_registered
    if not _exit_hook_registered:  # registered after multiprocessing's own handler, so it runs before it
        atexit.register(_stop_live_workers)
        _exit_hook_registered = True
    parent_end, child_end = SPAWN.Pipe()
    process = SPAWN.Process(target=serve, args=(child_end, spec, os.getpid()), name=f"ppo-core-{kind}-{name}")
    process.start()
    child_end.close()  # only the worker holds it now: its death closes the pipe
    worker = Worker(process, parent_end)
    _LIVE.add(worker)
    return worker


class IsolatedPlugin:
    """A plugin object (built from ``plugin_class``, ``options``, ``context``) living in a worker process.

    ``label`` names it in errors (``reward 'x' (plugin 'p')``); ``timeout_s`` bounds every call (``None``: no
    bound). Build it, then :meth:`wait_until_ready` (several start in parallel). Subclasses forward their
    methods with :meth:`_request`.
    """

    kind = "plugin"

    def __init__(self, reward_class: type, options: Any, context: RunContext, label: str,
                 timeout_s: Optional[float]):
        self.options = options
        self.label = label
        self.timeout_s = timeout_s
        self.reads_reference_hidden = False
        self._name = getattr(reward_class, "name", reward_class.__name__)
        try:
            self._spec = pickle.dumps((reward_class, options, context))
        except Exception as error:
            raise PluginError(f"{label} cannot run in a worker process: {type(error).__name__}: {error}; define the "
                              f"{self.kind} class at the top level of an importable module, or set `isolation: "
                              f"none` for it") from None
        self._worker: Optional[Worker] = _start_worker(self._spec, self._name, self.kind)
        self._ready = False
        self._finalizer = weakref.finalize(self, _stop_quietly, self._worker)
        self._one_request_at_a_time = threading.Lock()  # chunks of a batch are scored from background threads

    def wait_until_ready(self) -> None:
        """Block until the worker built the reward; a failure is a PluginError naming the reward."""
        if self._ready:
            return
        worker = self._worker
        message = None
        limit = None if self.timeout_s is None else max(self.timeout_s, START_TIMEOUT_S)
        try:
            if worker.connection.poll(limit):
                status, payload = pickle.loads(worker.connection.recv_bytes())
            else:
                status, payload = "late", f"not ready within {limit:g} s (its worker process was killed)"
        except (EOFError, OSError):
            status, payload = "died", worker.death() + _main_script_hint(worker.process.exitcode)
        if status == "ready":
            self.reads_reference_hidden, self._ready = payload, True
            return
        self._discard()
        if status == "failed":
            error = _exception_from(payload)
            if isinstance(error, UserError):
                raise error
            message = f"{type(error).__name__}: {error}"
        raise PluginError(f"{self.label} failed to start: {message or payload}")

    def close(self) -> None:
        if self._worker is not None:
            self._worker.stop(GRACE_S)
            self._worker = None
        self._finalizer.detach()

    def _request(self, method: str, samples: Sequence[Sample], hidden: Any) -> Any:
        with self._one_request_at_a_time:
            return self._request_now(method, samples, hidden)

    def _request_now(self, method: str, samples: Sequence[Sample], hidden: Any) -> Any:
        if self._worker is None:  # restarted after a fault: the fresh worker builds the reward again
            self._restart()
        try:
            self.wait_until_ready()
        except UserError as error:
            raise WorkerFault(f"could not be restarted after its last fault: {error}") from None
        connection = self._worker.connection
        try:
            connection.send_bytes(pickle.dumps((method, list(samples), hidden)))
            answered = connection.poll(self.timeout_s)
        except OSError:  # BrokenPipeError: it died between two calls
            answered = True
        except BaseException:  # a second Ctrl-C while waiting: its answer would be read as the next one's
            self._discard()
            raise
        if not answered:
            self._discard()
            raise WorkerFault(f"did not answer within timeout_s={self.timeout_s:g} (its worker process was killed "
                              f"and a fresh one started)")
        try:
            status, payload = pickle.loads(connection.recv_bytes())
        except (EOFError, OSError):
            death = self._worker.death()
            self._discard()
            raise WorkerFault(death) from None
        if status == "ok":
            return payload
        if status == "raised":
            raise _exception_from(payload)
        raise WorkerFault(payload)

    def _discard(self) -> None:
        self._finalizer.detach()
        self._worker.stop()
        self._worker, self._ready = None, False

    def _restart(self) -> None:
        self._worker = _start_worker(self._spec, self._name, self.kind)
        self._finalizer = weakref.finalize(self, _stop_quietly, self._worker)


class IsolatedReward(IsolatedPlugin, HiddenStateReward):
    """Stands in for a reward: the same calls (``__call__``, ``score_hidden``), answered by a worker process.
    It declares the hidden-state capability exactly when the reward in the worker does."""

    kind = "reward"

    def __call__(self, samples: Sequence[Sample]) -> Any:
        return self._request("score", samples, None)

    def score_hidden(self, samples: Sequence[Sample], hidden: Any) -> Any:
        return self._request("score_hidden", samples, hidden.detach().cpu())


def _main_script_hint(exitcode: Optional[int]) -> str:
    """A spawned worker first re-imports the main script; one that starts a run unguarded kills it at start-up."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if exitcode != 1 or path is None or getattr(main, "__spec__", None) is not None:
        return ""
    return (f"; a worker process re-imports the main script {path}: if it starts the run at import, guard that "
            f"with `if __name__ == \"__main__\":`")


def _stop_quietly(worker: Worker) -> None:
    if worker in _LIVE:
        worker.stop(GRACE_S)


# ---- in process ----------------------------------------------------------------------------------------------
def run_with_timeout(function: Callable[..., Any], args: tuple, timeout_s: Optional[float]) -> Any:
    """``function(*args)`` in this process, failing with WorkerFault after ``timeout_s`` or on ``sys.exit``.

    The call runs in a daemon thread, which a hung reward keeps, but which does not keep the process alive.
    """
    if timeout_s is None:
        try:
            return function(*args)
        except SystemExit as exit:
            raise WorkerFault(f"called sys.exit({exit.code!r})") from None
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["answer"] = function(*args)
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=call, daemon=True, name="ppo-core-reward")
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise WorkerFault(f"did not answer within timeout_s={timeout_s:g}")
    error = outcome.get("error")
    if isinstance(error, SystemExit):
        raise WorkerFault(f"called sys.exit({error.code!r})")
    if isinstance(error, KeyboardInterrupt):  # raised by the reward itself: signals reach the main thread only
        raise WorkerFault(f"raised KeyboardInterrupt: {error}")
    if error is not None:
        raise error
    return outcome["answer"]
