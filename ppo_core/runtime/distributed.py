"""Data parallel over ``torch.distributed``: the process group torchrun describes, or one process.

:class:`Distributed` is the one object the run passes around. In one process (:data:`SINGLE_PROCESS`) every method
returns its input unchanged, so a run that torchrun did not start computes exactly what it always did, as fast.
Under torchrun (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` in the environment) it joins the process
group: gloo on CPU, nccl on CUDA (one device per process, ``LOCAL_RANK``). Every collective has a time limit
(:data:`TIMEOUT_ENV`, default :data:`DEFAULT_TIMEOUT_S`); a collective that fails -- a rank died, or did not answer in
time -- raises :class:`DistributedError`, one line naming this rank and what it was waiting for, instead of hanging.

Rank 0 alone writes (metrics, checkpoints, the final model): the other ranks run in a private scratch directory
(:func:`follower_run_dir`) with a metrics log that writes nothing (:class:`NullMetricsLog`).
"""

from __future__ import annotations

import atexit
import os
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import torch

from ..errors import ConfigError, TrainingError
from .metrics import METRICS_FILE

TIMEOUT_ENV = "PPO_CORE_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 1800.0  # torch's own default; rank 0's evaluations and checkpoints must fit in it
BUCKET_ELEMENTS = 1 << 24  # gradients are summed in flat buckets of at most this many elements

# how the ranks' statistics become one: summed (counts), the largest (wall times), token-weighted (token means);
# every other statistic is a mean over equally many rows per rank, so its global value is the ranks' mean
SUMMED_STATS = ("response_tokens", "advantage/zero_std_groups", "reward/all_abstained", "data/truncated_prompts",
                "data/skipped_prompts")
SUMMED_SUFFIXES = ("/errors",)
LARGEST_PREFIXES = ("time/",)
TOKEN_WEIGHTED_STATS = ("value/mean", "value/explained_variance")
TOKENS = "response_tokens"


class DistributedError(TrainingError):
    """Another rank stopped, or a collective did not complete within the time limit."""


def timeout_seconds() -> float:
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(raw)
    except ValueError:
        seconds = 0.0
    if seconds <= 0:
        raise ConfigError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {raw!r}")
    return seconds


@dataclass(frozen=True)
class Distributed:
    """This process's place among the ranks. ``world_size == 1``: every collective is the identity."""

    rank: int = 0
    world_size: int = 1
    timeout_s: float = DEFAULT_TIMEOUT_S
    sharded: bool = False  # train.parallel fsdp: FSDP sums the gradients itself (runtime/fsdp.py)

    @property
    def is_primary(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    # ---- collectives ---------------------------------------------------------------------------------
    @contextmanager
    def collective(self, what: str) -> Iterator[None]:
        """Turns the backend's failure (a closed connection, a time-out) into one line naming this rank."""
        try:
            yield
        except RuntimeError as error:  # torch's DistBackendError is a RuntimeError too
            detail = _first_line(error)
            raise DistributedError(
                f"rank {self.rank} of {self.world_size}: {what} failed: another rank stopped or did not answer "
                f"within {self.timeout_s:g} s ({TIMEOUT_ENV}); see that rank's error ({detail})") from None

    def all_reduce_sum(self, tensor: torch.Tensor, what: str = "summing over ranks") -> torch.Tensor:
        """The sum of ``tensor`` over the ranks (a new tensor; in one process ``tensor`` itself)."""
        if not self.active:
            return tensor
        import torch.distributed as dist

        total = tensor.detach().clone()
        with self.collective(what):
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    def all_gather_object(self, value: Any, what: str = "gathering from ranks") -> list:
        """Every rank's ``value`` (picklable), in rank order."""
        if not self.active:
            return [value]
        import torch.distributed as dist

        gathered: list = [None] * self.world_size
        with self.collective(what):
            dist.all_gather_object(gathered, value)
        return gathered

    def broadcast_object(self, value: Any, what: str = "waiting for rank 0") -> Any:
        """Rank 0's ``value`` on every rank."""
        if not self.active:
            return value
        import torch.distributed as dist

        box = [value if self.is_primary else None]
        with self.collective(what):
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self, what: str = "waiting for every rank") -> None:
        if self.active:
            self.all_reduce_sum(torch.zeros(1, device=_collective_device()), what)

    def any(self, flag: bool, what: str = "agreeing on a stop") -> bool:
        """True on every rank when ``flag`` is true on any rank."""
        if not self.active:
            return flag
        return bool(self.all_reduce_sum(torch.tensor([float(flag)], device=_collective_device()), what).item() > 0)

    # ---- what a data-parallel run does with them ---------------------------------------------------------
    def sum_gradients(self, parameters: Iterable[torch.nn.Parameter], stats: dict[str, float]
                      ) -> dict[str, float]:
        """Sum every trainable parameter's gradient and the step's ``stats`` over the ranks, in place (each rank
        weighted its losses by the global size of the minibatch, so the sum is the one-process gradient)."""
        if not self.active:
            return stats
        if not self.sharded:  # FSDP reduce-scattered them in the backward pass
            self._all_reduce_gradients(parameters)
        keys = sorted(stats)
        summed = self.all_reduce_sum(torch.tensor([stats[k] for k in keys], dtype=torch.float64,
                                                  device=_collective_device()), "summing step statistics")
        return dict(zip(keys, summed.tolist()))

    def _all_reduce_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        import torch.distributed as dist

        params = [p for p in parameters if p.requires_grad]
        reached = self.all_reduce_sum(torch.tensor([float(p.grad is not None) for p in params],
                                                   device=_collective_device()), "summing gradients")
        params = [p for p, count in zip(params, reached.tolist()) if count > 0]  # no rank's loss: stays None
        for p in params:
            if p.grad is None:  # a parameter this rank's loss did not reach, but another's did
                p.grad = torch.zeros_like(p)
        for bucket in _buckets(params):
            flat = torch.cat([p.grad.reshape(-1) for p in bucket])
            with self.collective("summing gradients"):
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = 0
            for p in bucket:
                p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
                offset += p.numel()

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Every rank starts from rank 0's weights (they are built from the same seed; this makes sure)."""
        if not self.active:
            return
        import torch.distributed as dist

        with self.collective("receiving rank 0's weights"), torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)

    def reduce_stats(self, stats: dict[str, float]) -> dict[str, float]:
        """The global value of each logged statistic (see SUMMED_STATS); in one process ``stats`` itself."""
        if not self.active:
            return stats
        return combine_stats(self.all_gather_object(stats, "gathering rollout statistics"))

    def gather_values(self, values: list) -> list:
        """Every rank's ``values`` concatenated in rank order (a reward's raw values, for its running moments)."""
        if not self.active:
            return values
        return [value for part in self.all_gather_object(values, "gathering reward values") for value in part]

    def shard(self, items: Sequence) -> list:
        """This rank's contiguous share of ``items`` (their count divides by the number of ranks)."""
        if not self.active:
            return items
        share = len(items) // self.world_size
        return list(items[self.rank * share:(self.rank + 1) * share])

    def seed_rank(self, generator: torch.Generator, seed: int) -> None:
        """Rank r > 0 samples with seed + r (its generator and torch's global one); rank 0 keeps ``seed``."""
        if self.rank:
            generator.manual_seed(seed + self.rank)
            torch.manual_seed(seed + self.rank)

    def local_ppo(self, ppo, source: str = "config"):
        """The ppo section one rank runs: ``rollout_batch_size`` and ``minibatch_size`` count over all ranks (as
        veRL's and OpenRLHF's do), so each rank takes 1/N of them; ``micro_batch_size`` is per rank."""
        if not self.active:
            return ppo
        n = self.world_size
        for field in ("rollout_batch_size", "minibatch_size"):
            if getattr(ppo, field) % n:
                raise ConfigError(f"{source}: ppo.{field} ({getattr(ppo, field)}) must divide by the number of "
                                  f"ranks ({n}): each rank takes an equal share")
        minibatch = ppo.minibatch_size // n
        if ppo.micro_batch_size is not None and minibatch % ppo.micro_batch_size:
            raise ConfigError(f"{source}: ppo.micro_batch_size ({ppo.micro_batch_size}) must divide each rank's "
                              f"minibatch (ppo.minibatch_size / ranks = {ppo.minibatch_size} / {n} = {minibatch})")
        return ppo.model_copy(update={"rollout_batch_size": ppo.rollout_batch_size // n,
                                      "minibatch_size": minibatch})

    # ---- checkpoints -----------------------------------------------------------------------------------
    def generator_states(self, state: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every rank's generator state, as a checkpoint's rng file holds them (``generator`` is rank 0's)."""
        states = self.all_gather_object(state.cpu(), "gathering generator states") if self.active else [state]
        return {generator_key(rank): s for rank, s in enumerate(states)}

    def own_generator_state(self, states: dict[str, torch.Tensor], checkpoint: Path) -> torch.Tensor:
        """This rank's state from a checkpoint's rng file; a checkpoint of another number of ranks is an error."""
        saved = sum(1 for key in states if key == "generator" or key.startswith("generator_rank"))
        if saved != self.world_size:
            raise ConfigError(f"--resume: {checkpoint} was written by {saved} rank(s) and this run has "
                              f"{self.world_size}; resume with the same number of processes "
                              f"(torchrun --nproc-per-node {saved} for one node)")
        return states[generator_key(self.rank)]


def generator_key(rank: int) -> str:
    return "generator" if rank == 0 else f"generator_rank{rank}"


def combine_stats(per_rank: Sequence[dict[str, float]]) -> dict[str, float]:
    """One dict of statistics from every rank's (see SUMMED_STATS); keys in the first rank's order."""
    keys = list(dict.fromkeys(key for stats in per_rank for key in stats))
    tokens = [float(stats.get(TOKENS, 0.0)) for stats in per_rank]
    combined = {}
    for key in keys:
        values = [float(stats[key]) for stats in per_rank if key in stats]
        if key in SUMMED_STATS or key.endswith(SUMMED_SUFFIXES):
            combined[key] = sum(values)
        elif key.startswith(LARGEST_PREFIXES):
            combined[key] = max(values)
        elif key in TOKEN_WEIGHTED_STATS and len(values) == len(per_rank) and sum(tokens) > 0:
            combined[key] = sum(v * t for v, t in zip(values, tokens)) / sum(tokens)
        else:
            combined[key] = sum(values) / len(values)
    return combined


SINGLE_PROCESS = Distributed()


def _first_line(error: BaseException) -> str:
    """The backend's message without its source location (``[.../pair.cc:553] Connection closed by peer``)."""
    lines = str(error).strip().splitlines()
    return re.sub(r"^\[[^\]]*\]\s*", "", lines[0])[:160] if lines else type(error).__name__


def _collective_device() -> torch.device:
    """nccl reduces CUDA tensors, gloo CPU ones."""
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _buckets(params: Sequence[torch.nn.Parameter]) -> Iterator[list]:
    bucket, size = [], 0
    for p in params:
        if bucket and size + p.numel() > BUCKET_ELEMENTS:
            yield bucket
            bucket, size = [], 0
        bucket.append(p)
        size += p.numel()
    if bucket:
        yield bucket


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def single_process_only(command: str) -> None:
    """Only ``train`` runs data parallel: another command started by torchrun would run N times over one output."""
    if launched_by_torchrun():
        raise ConfigError(f"{command} runs in one process; only `ppo-core train` runs under torchrun "
                          f"(WORLD_SIZE is {os.environ['WORLD_SIZE']})")


def join_process_group(device: str = "auto", parallel: str = "ddp") -> Distributed:
    """The process group torchrun started this process in (joined once), or :data:`SINGLE_PROCESS`.

    ``device`` is the config's ``model.device``: on CUDA each process takes the device ``LOCAL_RANK`` and the nccl
    backend; otherwise gloo. (nccl is written to the same contract but has not run in this project's tests.)
    ``parallel`` is ``train.parallel``: ``fsdp`` makes the ranks :attr:`Distributed.sharded`."""
    if not launched_by_torchrun():
        return SINGLE_PROCESS
    import torch.distributed as dist

    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    timeout = timeout_seconds()
    if not dist.is_initialized():
        cuda = device != "cpu" and torch.cuda.is_available() and not str(device).startswith("mps")
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        try:
            dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout))
        except (RuntimeError, ValueError) as error:
            raise DistributedError(f"rank {rank} of {world_size}: could not join the process group within "
                                   f"{timeout:g} s: {_first_line(error)}") from None
        atexit.register(_leave_process_group)
    return Distributed(rank=rank, world_size=world_size, timeout_s=timeout, sharded=parallel == "fsdp")


def _leave_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


# ---- the ranks that do not write ---------------------------------------------------------------------------
class NullMetricsLog:
    """The metrics log of a rank > 0: it counts the lines rank 0 writes and writes none; ``path`` is an empty file
    in the rank's scratch directory."""

    def __init__(self, path: Path, lines: int = 0):
        self.path = Path(path)
        self.path.touch()
        self.lines = lines

    def write(self, record: dict) -> None:
        self.lines += 1

    def close(self) -> None:
        pass


class FollowerRunDirectory:
    """What a rank > 0 runs in: a private scratch ``work`` directory (deleted at the end), never the run
    directory; :meth:`publish` answers where rank 0 put the same thing."""

    def __init__(self, final: Path):
        self.final = Path(final).expanduser().absolute()
        self._scratch = tempfile.TemporaryDirectory(prefix="ppo-core-rank-")
        self.work = Path(self._scratch.name)

    def publish(self, written: Path) -> Path:
        return self.final / Path(written).relative_to(self.work)

    def __enter__(self) -> "FollowerRunDirectory":
        return self

    def __exit__(self, *exc) -> None:
        self._scratch.cleanup()


def rank_run_dir(dist: Distributed, claim: Callable[[], Any], output_dir: Path):
    """Rank 0 claims the run directory (``claim()``: marker, lock, staging); the others run beside it."""
    return claim() if dist.is_primary else FollowerRunDirectory(output_dir)


def open_rank_run_dir(dist: Distributed, open_run_dir: Callable, run_dir, config, resume: bool,
                      load: Callable[[Path], int]):
    """Rank 0 opens the run directory (:func:`ppo_core.runtime.loop.open_run_dir`) and tells the others which
    checkpoint it resumes from before loading it; they load the same one at the same time (the run directory is on
    a file system they share; FSDP's loading is a collective)."""
    if dist.is_primary:
        told: list[Path] = []

        def tell_and_load(path: Path) -> int:
            told.append(path)
            dist.broadcast_object(str(path), "telling the ranks the checkpoint")
            return load(path)

        log = open_run_dir(run_dir, config, resume, tell_and_load)
        if not told:
            dist.broadcast_object(None, "telling the ranks there is no checkpoint")
        return log
    path: Optional[str] = dist.broadcast_object(None, "waiting for rank 0 to open the run directory")
    return NullMetricsLog(run_dir.work / METRICS_FILE, load(Path(path)) if path else 0)
