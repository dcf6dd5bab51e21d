"""The pieces every training command shares (ppo_core.runtime): the run loop, the non-finite guard, the
optimizer, the learning-rate schedule, gradient clipping and the atomic writers."""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path

import pytest
import torch

from ppo_core.errors import TrainingError
from ppo_core.runtime.checkpoints import write_atomically, write_file_atomically
from ppo_core.runtime.loop import (
    NONFINITE,
    Interrupted,
    NonFiniteError,
    NonFiniteGuard,
    RunLoop,
)
from ppo_core.runtime.metrics import MetricsLog, Progress, read_metrics
from ppo_core.runtime.optim import clip_gradients, make_optimizer, make_scheduler
from ppo_core.runtime.rundir import RunDirectory


# ---- the learning-rate schedule ------------------------------------------------------------------------
def schedule_before_runtime_optim(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """The multiplier PPO and SFT used before make_scheduler existed (copied verbatim): runs resumed across the
    change and the README's demo numbers depend on every learning rate staying bit for bit the same."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def learning_rates(make_scheduler_for, steps: int, lr: float = 1e-3) -> list[float]:
    """The learning rate of each optimizer step, read from the optimizer as it steps."""
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([param], lr=lr)
    scheduler = make_scheduler_for(optimizer)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


@pytest.mark.parametrize("schedule,warmup,total", [
    ("linear", 0, 1760),  # the demo's PPO: 110 updates x 4 epochs x 4 minibatches
    ("constant", 20, 330),  # the demo's SFT
    ("linear", 0, 100), ("linear", 3, 64), ("cosine", 0, 100), ("cosine", 20, 400), ("constant", 0, 16),
])
def test_the_schedule_gives_the_same_learning_rates_as_before(schedule, warmup, total):
    ours = learning_rates(lambda opt: make_scheduler(opt, total, warmup, schedule), total)
    before = learning_rates(lambda opt: torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: schedule_before_runtime_optim(step, total, warmup, schedule)), total)
    assert ours == before  # exact: float equality, every step
    if warmup:
        assert ours[0] == pytest.approx(1e-3 / warmup) and ours[warmup - 1] == pytest.approx(1e-3)


def test_the_scheduler_state_resumes_the_same_sequence():
    param = torch.nn.Parameter(torch.zeros(2))
    first = torch.optim.SGD([param], lr=1e-3)
    scheduler = make_scheduler(first, 10, 2, "linear")
    for _ in range(4):
        first.step()
        scheduler.step()
    second = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=1e-3)
    resumed = make_scheduler(second, 10, 2, "linear")
    resumed.load_state_dict(scheduler.state_dict())
    assert scheduler.state_dict()["lr_lambdas"] == [None]  # a plain function: nothing of it in checkpoints
    assert resumed.get_last_lr() == scheduler.get_last_lr()


# ---- optimizer and clipping ----------------------------------------------------------------------------
def test_one_fused_adamw_for_tensors_and_param_groups():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    model[1].bias.requires_grad_(False)
    plain = make_optimizer(model.parameters(), 0.1, weight_decay=0.01)
    assert isinstance(plain, torch.optim.AdamW) and plain.defaults["fused"] is True
    assert len(plain.param_groups) == 1 and len(plain.param_groups[0]["params"]) == 3  # the frozen bias is left out
    assert plain.param_groups[0]["weight_decay"] == 0.01
    grouped = make_optimizer([{"params": model[0].parameters(), "lr": 0.1},
                              {"params": model[1].parameters(), "lr": 0.01}], 0.1)
    assert [group["lr"] for group in grouped.param_groups] == [0.1, 0.01]
    assert [len(group["params"]) for group in grouped.param_groups] == [2, 1]
    assert make_optimizer(model.parameters(), 0.1, fused=False).defaults["fused"] is None  # torch's default


def gradients(*grads: list[float]) -> list[torch.nn.Parameter]:
    params = []
    for values in grads:
        param = torch.nn.Parameter(torch.zeros(len(values)))
        param.grad = torch.tensor(values)
        params.append(param)
    return params + [torch.nn.Parameter(torch.zeros(1))]  # one without a gradient: ignored


def test_clip_gradients_returns_the_global_norm_and_clips_only_when_asked():
    params = gradients([3.0, 0.0], [0.0, 4.0])
    assert clip_gradients(params, None) == pytest.approx(5.0)
    assert params[0].grad.tolist() == [3.0, 0.0]  # not clipped
    assert clip_gradients(params, 1.0) == pytest.approx(5.0)  # the norm before clipping
    assert torch.cat([p.grad for p in params[:2]]).norm() == pytest.approx(1.0, rel=1e-5)
    assert math.isnan(clip_gradients(gradients([float("nan"), 1.0]), 1.0))
    assert math.isinf(clip_gradients(gradients([float("inf")]), None))
    assert clip_gradients([torch.nn.Parameter(torch.zeros(1))], None) == 0.0


# ---- the non-finite guard ------------------------------------------------------------------------------
def test_the_guard_skips_counts_resets_and_stops_naming_the_step():
    guard = NonFiniteGuard(3, where="job: ", advice="lower the lr")
    assert guard.check(1.0, 2.0)
    assert not guard.check(float("nan"), 2.0) and not guard.check(1.0, float("inf"))
    assert guard.check(1.0, 2.0) and guard.in_a_row == 0  # a finite step restarts the count
    assert not guard.check(float("nan"), 1.0, at="step 5") and not guard.check(float("nan"), 1.0, at="step 6")
    with pytest.raises(NonFiniteError) as stopped:
        guard.check(float("nan"), float("nan"), at="epoch 2, step 7")
    assert isinstance(stopped.value, TrainingError)
    assert str(stopped.value) == ("job: 3 optimizer steps in a row had a non-finite loss or gradient "
                                  "(loss nan, grad norm nan, epoch 2, step 7); lower the lr")


# ---- the run loop --------------------------------------------------------------------------------------
class SumWindow:
    """Logs the sum of the ``value`` statistic over the steps since the last line."""

    def __init__(self):
        self.total = 0.0

    def add(self, stats, elapsed):
        self.total += stats["value"]

    def line(self, done):
        record, self.total = {"step": done, "value": self.total}, 0.0
        return record


def make_loop(tmp_path: Path, stats: list[dict], saved: list, **options) -> RunLoop:
    steps = iter(stats)
    log = MetricsLog(tmp_path / "metrics.jsonl")
    progress = Progress(len(stats), "none")

    def checkpoint(directory, done, lines):
        assert directory == tmp_path
        saved.append((done, lines))
        return tmp_path / f"checkpoint-{done}"

    def write_final(tmp):
        (tmp / "model.txt").write_text(f"after {len(saved)} checkpoints")

    settings = dict(total=sum(1 for s in stats if not s.get(NONFINITE)), step=lambda: next(steps),
                    window=SumWindow(), log=log, progress=progress, guard=NonFiniteGuard(3),
                    save_checkpoint=checkpoint, write_final=write_final,
                    directory=RunDirectory(tmp_path, resume=True, overwrite=False, field_name="train.output_dir"))
    return RunLoop(**{**settings, **options})


def test_the_loop_logs_windows_saves_on_cadence_and_skips_non_finite_steps(tmp_path):
    stats = [{"value": 1.0}, {"value": 2.0}, {NONFINITE: 1.0, "loss": float("nan")}, {"value": 4.0},
             {"value": 8.0}, {"value": 16.0}]
    saved: list = []
    evaluations = []
    loop = make_loop(tmp_path, stats, saved, save_every=2, log_every=3, eval_every=4,
                     evaluate=lambda: evaluations.append(1) or {"eval/x": 1.0})
    final = loop.run(start=0)
    # 5 finite steps; a checkpoint (2, 4) or the last step (5) closes a window early, as does an evaluation (4)
    assert read_metrics(tmp_path / "metrics.jsonl") == [
        {"step": 2, "value": 3.0}, {"step": 3, "value": 4.0}, {"step": 4, "value": 8.0, "eval/x": 1.0},
        {"step": 5, "value": 16.0, "eval/x": 1.0}]
    assert saved == [(2, 1), (4, 3)]  # each checkpoint knows how many metrics lines belong to it
    assert len(evaluations) == 2
    assert final == tmp_path / "final" and (final / "model.txt").read_text() == "after 2 checkpoints"


def test_the_loop_stops_after_too_many_non_finite_steps_in_a_row(tmp_path):
    stats = [{"value": 1.0}] + [{NONFINITE: 1.0, "loss": float("nan"), "grad_norm": 1.0}] * 2
    loop = make_loop(tmp_path, stats, [], guard=NonFiniteGuard(2, where="sft: ", unit="steps", advice="lower it"))
    loop.total = 3
    with pytest.raises(NonFiniteError, match=r"^sft: 2 steps in a row had a non-finite loss or gradient "
                                             r"\(loss nan, grad norm 1.0\); lower it$"):
        loop.run(start=0)
    assert not (tmp_path / "final").exists()


def test_a_stop_request_saves_a_checkpoint_and_raises_interrupted(tmp_path):
    def terminated_during_step_2():
        os.kill(os.getpid(), signal.SIGTERM)  # the handler only raises a flag; the step finishes
        return {"value": 2.0}

    stats = iter([{"value": 1.0}, None, {"value": 3.0}])
    saved: list = []
    loop = make_loop(tmp_path, [{"value": 0.0}] * 3, saved)
    loop.step = lambda: next(stats) or terminated_during_step_2()
    with pytest.raises(Interrupted) as stopped:
        loop.run(start=0)
    assert (stopped.value.signal_name, stopped.value.update) == ("SIGTERM", 2)
    assert stopped.value.checkpoint == tmp_path / "checkpoint-2" and saved == [(2, 2)]
    assert not (tmp_path / "final").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are put back


def test_the_loop_resumes_from_its_start_and_a_finished_run_only_saves(tmp_path):
    saved: list = []
    loop = make_loop(tmp_path, [{"value": 5.0}] * 2, saved)
    loop.total = 4
    loop.run(start=2)
    assert [line["step"] for line in read_metrics(tmp_path / "metrics.jsonl")] == [3, 4]
    (tmp_path / "done").mkdir()
    done = make_loop(tmp_path / "done", [], [])
    assert done.run(start=0) == tmp_path / "done" / "final"


# ---- atomic writers ------------------------------------------------------------------------------------
def test_write_atomically_replaces_a_directory_or_leaves_it_untouched(tmp_path):
    target = tmp_path / "out"
    write_atomically(target, lambda tmp: (tmp / "a.txt").write_text("first"))
    write_atomically(target, lambda tmp: (tmp / "b.txt").write_text("second"))
    assert sorted(os.listdir(target)) == ["b.txt"]

    def crash(tmp):
        (tmp / "c.txt").write_text("half")
        raise RuntimeError("crash while writing")

    with pytest.raises(RuntimeError, match="crash while writing"):
        write_atomically(target, crash)
    assert sorted(os.listdir(target)) == ["b.txt"]
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no .partial- or .old- left behind
    (tmp_path / "file").write_text("in the way")
    write_atomically(tmp_path / "file", lambda tmp: (tmp / "x").write_text("x"))
    assert (tmp_path / "file" / "x").read_text() == "x"


def test_write_file_atomically_replaces_a_file_or_leaves_it_untouched(tmp_path):
    target = tmp_path / "sub" / "rows.jsonl"
    assert write_file_atomically(target, lambda tmp: tmp.write_text("one\n")) == target
    write_file_atomically(target, lambda tmp: tmp.write_text("two\n"))
    assert target.read_text() == "two\n"

    def crash(tmp):
        tmp.write_text("half")
        raise RuntimeError("crash while writing")

    with pytest.raises(RuntimeError, match="crash while writing"):
        write_file_atomically(target, crash)
    assert target.read_text() == "two\n" and os.listdir(target.parent) == ["rows.jsonl"]


# ---- reward-model training -----------------------------------------------------------------------------
def test_reward_training_skips_non_finite_steps_then_stops_naming_the_step(tiny_model_dir, monkeypatch):
    from ppo_core.config.train_reward import RewardTrainOptions
    from ppo_core.reward_model import training
    from ppo_core.reward_model.training import train_reward_model

    pairs = [{"prompt": f"p{i}", "chosen": "a" * (1 + i % 3), "rejected": "b"} for i in range(24)]
    options = RewardTrainOptions(epochs=3, batch_size=4, held_out_fraction=0.0)
    finite_loss = training._loss
    calls = [0]

    def nan_at_step_2_and_from_step_4(rewards, targets, kind):
        calls[0] += 1
        loss = finite_loss(rewards, targets, kind)
        return loss * float("nan") if calls[0] >= 4 or calls[0] == 2 else loss

    monkeypatch.setattr(training, "_loss", nan_at_step_2_and_from_step_4)
    with pytest.raises(NonFiniteError, match=r"^train-reward: 3 optimizer steps in a row had a non-finite loss "
                                             r"or gradient \(loss nan, grad norm nan, epoch 1, step 6\); lower"):
        train_reward_model(str(tiny_model_dir), pairs, options)
    assert calls[0] == 6  # step 2 was skipped alone (training went on), steps 4, 5 and 6 stopped it


def test_reward_training_stops_between_steps_on_sigterm(tiny_model_dir, monkeypatch):
    from ppo_core.config.train_reward import RewardTrainOptions
    from ppo_core.reward_model import training
    from ppo_core.reward_model.training import train_reward_model

    pairs = [{"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(16)]
    finite_loss = training._loss
    calls = [0]

    def terminated_during_step_2(rewards, targets, kind):
        calls[0] += 1
        if calls[0] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return finite_loss(rewards, targets, kind)

    monkeypatch.setattr(training, "_loss", terminated_during_step_2)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM during reward training at epoch 1 after step 2"):
        train_reward_model(str(tiny_model_dir), pairs, RewardTrainOptions(epochs=2, batch_size=4))
    assert calls[0] == 2  # step 2 finished, step 3 never started
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
