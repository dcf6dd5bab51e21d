"""The fault catalogue, environments: an environment that raises, hangs, exits, crashes, answers with the wrong
lengths, a live object for a state or a non-finite turn reward, or fails to start ends the CLI with exit status 2
and ONE line naming the environment, its plugin and (where there is one) the turn and the episode -- never a
traceback, never a process left behind, never a checkpoint lost. An environment that never says done, or whose
observation would overflow the context, is no fault: its episodes end truncated and the run completes.

The throwaway environments are ``FAULTY_ENVIRONMENTS`` in tests/faultkit.py (plugin 'faulty_env').
"""

from __future__ import annotations

import os
import time

import pytest
from faultkit import (  # noqa: F401 -- tiny_model is a fixture
    DELETE,
    Fault,
    as_a_cli_process,
    check_error_line,
    check_fault_in_process,
    prepare,
    processes_marked,
    run_cli,
    substitute,
    tiny_model,
)

from ppo_core.cli import main
from ppo_core.runtime.metrics import read_metrics

FIRST_EPISODE = "on episode 0 (prompt 'reverse: "
A_BATCH = "on a batch of 4 episodes (first: episode 0 (prompt 'reverse: "
UPDATE_1_KEPT = ("{tmp}/run/checkpoints/update-000001/manifest.json", "{tmp}/run/metrics.jsonl")
TWO_UPDATES = {"updates": 2, "save_every": 1}


def environment(name: str, train: dict = None, **settings) -> dict:
    """BASE with the environment ``name`` of plugin 'faulty_env': two turns of episodes with room for both (and
    the reward in this process: a worker of its own would only cost its start)."""
    change = {"environment": {"name": name, "max_turns": 2, "max_episode_tokens": 32, **settings},
              "rewards": [{"name": "exact_match", "isolation": "none"}]}
    return {**change, "train": train} if train else change


def label(name: str) -> str:
    return f"environment '{name}' (plugin 'faulty_env')"


ENVIRONMENT_FAULTS = [
    # the fault in update 2's second turn: named there; update 1's checkpoint and metrics stay
    Fault("env-step-raises", (label("step_raises"), "raised RuntimeError in step at turn 2", FIRST_EPISODE,
                              "the board is on fire"),
          environment("step_raises", TWO_UPDATES, options={"batch": 2, "turn": 2}), plugin="faulty_env",
          present=UPDATE_1_KEPT),
    Fault("env-step-raises-in-eval", (label("step_raises"), "raised RuntimeError in step at turn 1", FIRST_EPISODE),
          environment("step_raises", isolation="none"), plugin="faulty_env", command="eval",
          args=("--model", "{model}")),
    Fault("env-reset-raises", (label("reset_raises"), "raised OSError in reset", FIRST_EPISODE, "no boards left"),
          environment("reset_raises"), plugin="faulty_env"),
    Fault("env-returns-fewer-states", (label("fewer_states"), "returned 3 states from step for 4 episodes at turn 1",
                                       A_BATCH),
          environment("fewer_states"), plugin="faulty_env"),
    Fault("env-returns-fewer-observations", (label("fewer_observations"), "raised ValueError in step at turn 1",
                                             "EnvStep fields differ in length", "observations: 3"),
          environment("fewer_observations", isolation="none"), plugin="faulty_env"),
    Fault("env-live-object-state", (label("live_state"), "raised ValueError in reset", FIRST_EPISODE,
                                    "state 0 is not plain data", "lock"),
          environment("live_state", isolation="none"), plugin="faulty_env"),
    Fault("env-nan-turn-reward", (label("nan_reward"), "raised ValueError in step at turn 1", FIRST_EPISODE,
                                  "reward 0: expected a finite float or None, got nan"),
          environment("nan_reward", isolation="none"), plugin="faulty_env"),
    Fault("env-fails-to-start", (label("fails_to_start"), "failed to start", "no licence for this game"),
          environment("fails_to_start"), plugin="faulty_env"),
    Fault("env-unknown-name", ("{config}", "environment.name", "unknown environment 'step_raisse'", "step_raises"),
          environment("step_raisse"), plugin="faulty_env"),
    Fault("env-skips-long-prompts", ("{config}", "data.long_prompts", "`skip`", "truncate"),
          {**environment("step_raises"), "data": {"long_prompts": "skip"}}, plugin="faulty_env"),
    Fault("env-without-dataset-or-records", ("data.dataset", "Field required",
                                             "environment 'step_raises' of plugin 'faulty_env'",
                                             "makes no episodes of its own"),
          {**environment("step_raises"), "data": DELETE}, plugin="faulty_env"),
    Fault("env-first-prompt-too-long", ("the first prompt from " + label("long_first_prompt"),
                                        "data.max_prompt_tokens", "more than 64"),
          {**environment("long_first_prompt", isolation="none"),
           "data": {"long_prompts": "error", "max_prompt_tokens": 64}}, plugin="faulty_env"),
    Fault("env-own-records-raise", ("environment 'own_records_raise'", "OwnRecordsRaise", "train split",
                                    "OSError: the deck is gone"),
          {**environment("own_records_raise", isolation="none"), "data": DELETE}, plugin="faulty_env"),
    Fault("env-own-records-exit", ("environment 'own_records_exit'", "OwnRecordsExit", "called sys.exit(7)",
                                   "train split"),
          {**environment("own_records_exit", isolation="none"), "data": DELETE}, plugin="faulty_env"),
]


@pytest.mark.parametrize("fault", ENVIRONMENT_FAULTS, ids=[fault.id for fault in ENVIRONMENT_FAULTS])
def test_environment_fault_is_one_line_naming_it(fault, tmp_path, tiny_model, request, make_distribution,
                                                 monkeypatch, capsys):
    check_fault_in_process(fault, tmp_path, tiny_model, request, make_distribution, monkeypatch, capsys)


# ---- in their worker process, as real `ppo-core` processes: bounded time, no process of the run left behind ----
ENVIRONMENT_PROCESS_FAULTS = [
    Fault("env-step-hangs-past-timeout", (label("step_hangs"), "did not answer within timeout_s=1",
                                          "in step at turn 1", A_BATCH),
          environment("step_hangs", timeout_s=1), plugin="faulty_env"),
    # a crash in update 2: update 1's checkpoint stays
    Fault("env-step-segfault", (label("step_segfaults"), "SIGSEGV", "in step at turn 1", A_BATCH),
          environment("step_segfaults", TWO_UPDATES, options={"batch": 2}), plugin="faulty_env",
          present=UPDATE_1_KEPT),
    pytest.param(Fault("env-step-sys-exit", (label("step_exits"), "called sys.exit(3) in step at turn 2", A_BATCH),
                       environment("step_exits", options={"turn": 2}), plugin="faulty_env"),
                 marks=pytest.mark.slow, id="env-step-sys-exit"),
    Fault("env-step-os-exit", (label("step_hard_exit"), "exited with status 5", "in step at turn 1", A_BATCH),
          environment("step_hard_exit"), plugin="faulty_env"),
    # in the main process (isolation: none) a hung step is left in a daemon thread that cannot hold the exit
    pytest.param(Fault("env-step-hangs-in-process", (label("step_hangs"), "timeout_s=1", "in step at turn 1"),
                       environment("step_hangs", timeout_s=1, isolation="none"), plugin="faulty_env"),
                 marks=pytest.mark.slow, id="env-step-hangs-in-process"),
    pytest.param(Fault("env-step-raises-in-a-real-process", (label("step_raises"), "RuntimeError in step at turn 1",
                                                             FIRST_EPISODE),
                       environment("step_raises"), plugin="faulty_env"),
                 marks=pytest.mark.slow, id="env-step-raises-in-a-real-process"),
]


@pytest.mark.parametrize("fault", ENVIRONMENT_PROCESS_FAULTS,
                         ids=lambda fault: fault.id if isinstance(fault, Fault) else None)
def test_environment_fault_in_a_real_process(fault, tmp_path, tiny_model, make_distribution, monkeypatch):
    argv = prepare(fault, tmp_path, tiny_model, None, make_distribution, monkeypatch)
    marker = f"{os.getpid()}-{fault.id}"
    started = time.monotonic()
    done = run_cli(argv, tmp_path, tmp_path / f"site-ppo-core-{fault.plugin}", marker)
    assert time.monotonic() - started < 180
    names = {"tmp": tmp_path, "model": tiny_model, "config": tmp_path / fault.name}
    check_error_line(done.returncode, done.stdout, done.stderr, substitute(list(fault.expect), **names))
    assert processes_marked(marker) == [], "a process of the run outlived it"
    missing = [path for path in substitute(list(fault.present), **names) if not os.path.exists(path)]
    assert not missing, f"not written where it belongs: {missing}"


# ---- no faults: the run completes, nothing lost ---------------------------------------------------------------
def train_to_the_end(change: dict, tmp_path, tiny_model, make_distribution, monkeypatch) -> list[dict]:
    """Train BASE + ``change`` with plugin 'faulty_env' through the CLI; exit 0, the final checkpoint written;
    returns the metrics of every update."""
    fault = Fault("completes", (), change, plugin="faulty_env")
    monkeypatch.chdir(tmp_path)
    argv = prepare(fault, tmp_path, tiny_model, None, make_distribution, monkeypatch)
    with as_a_cli_process():
        assert main(argv) == 0
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    return read_metrics(tmp_path / "run" / "metrics.jsonl")


def test_an_environment_that_never_says_done_is_cut_at_max_turns(tmp_path, tiny_model, make_distribution,
                                                                 monkeypatch):
    """Update 1's episodes end at once, solved; update 2's never end: each is cut at max_turns (3), truncated,
    and counted as unsolved, since the environment has reported successes before."""
    change = environment("never_done", {"updates": 2}, max_turns=3, max_episode_tokens=48,
                         options={"first_batch_succeeds": True})
    first, second = train_to_the_end(change, tmp_path, tiny_model, make_distribution, monkeypatch)
    assert (first["env/turns_mean"], first["env/truncated_rate"], first["env/success_rate"]) == (1.0, 0.0, 1.0)
    assert (second["env/turns_mean"], second["env/truncated_rate"], second["env/success_rate"]) == (3.0, 1.0, 0.0)
    assert second["env/errors"] == 0.0


def test_an_observation_overflowing_the_context_ends_the_episode_truncated(tmp_path, tiny_model, make_distribution,
                                                                           monkeypatch):
    """From turn 2 on, every observation is 1000 tokens, more than the model's context (128): never appended,
    the episode ends truncated after its second answer; no sequence of the rollout is longer than
    max_episode_tokens, and its only context tokens are turn 1's observation."""
    from ppo_core.commands.train import build_run, next_prompt_batch
    from ppo_core.config import load_config

    change = environment("floods", max_turns=4, isolation="none", options={"turn": 2})
    metrics = train_to_the_end(change, tmp_path, tiny_model, make_distribution, monkeypatch)
    assert [(m["env/turns_mean"], m["env/truncated_rate"]) for m in metrics] == [(2.0, 1.0)]
    assert metrics[0]["env/success_rate"] is None  # never reported: unknown (nan, null in metrics.jsonl)

    run = build_run(load_config(tmp_path / "bad.yaml", ["train.output_dir=" + str(tmp_path / "played")]))
    try:
        batch = next_prompt_batch(run)
        played = run.episodes.play(run.model.policy, batch.records, batch.states, None, greedy=True)
    finally:
        run.episodes.close()
        run.composer.close()
    observation = len(run.tokenizer(" again:", add_special_tokens=False)["input_ids"])
    assert played.tokens.shape[1] <= 32
    assert (played.mask & ~played.action_mask).sum(dim=1).tolist() == [observation] * 4
    assert [len(sample.turns) for sample in played.samples] == [2] * 4
    assert played.stats["env/truncated_rate"] == 1.0


@pytest.mark.parametrize("name, isolation, on_error, turn_reward", [
    ("step_raises", "none", "skip", None), ("step_raises", "none", -1.0, -1.0),
    ("step_segfaults", "process", "skip", None)])  # its worker dies at turn 2 and a fresh one plays update 2
def test_on_error_lets_the_run_complete_and_counts_the_faults(tmp_path, tiny_model, make_distribution, monkeypatch,
                                                              name, isolation, on_error, turn_reward):
    """step fails at every turn 2: `on_error` ends those episodes there (no turn reward, or its number) and
    `env/errors` counts one fault per update."""
    change = environment(name, {"updates": 2}, on_error=on_error, isolation=isolation, options={"turn": 2})
    metrics = train_to_the_end(change, tmp_path, tiny_model, make_distribution, monkeypatch)
    assert [m["env/errors"] for m in metrics] == [1.0, 1.0]
    assert [m.get("env/turn_reward/2") for m in metrics] == [turn_reward, turn_reward]
    assert all(m["env/turn_reward/1"] == 0.5 and m["env/turns_mean"] == 2.0 for m in metrics)
