"""Data-parallel training for `benchmarks.learning` on one machine: `procs=N` runs N processes over gloo, each
with `batch / N` of every step's samples (the same samples a single process would draw) and its share of the
torch threads, their gradients averaged by `DistributedDataParallel`. On a small model a process of one thread
uses its core better than one process uses two (2 cores: a step of 32 words takes 142 ms in one process of 2
threads, 16 words take 109 ms in each of two processes side by side; benchmarks/results/learning.md).

The loss of each process is its target tokens' loss summed and divided by the whole step's token count, so the
averaged gradient is the single process's (the mean over every target token of the step), whatever the split.
"""

from __future__ import annotations

import ctypes
import signal
import socket
from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

# How long a process waits for the others (gloo's default is 30 minutes): a run paused with SIGSTOP while the
# machine does something else resumes instead of timing out.
WAIT = timedelta(hours=3)


class Ranks:
    """This process's place among the training processes; alone (`world=1`) every method is a no-op."""

    def __init__(self, rank: int = 0, world: int = 1):
        self.rank, self.world = rank, world

    @property
    def lead(self) -> bool:
        """The process that evaluates, writes the curve and saves the weights."""
        return self.rank == 0

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model whose backward averages the gradients over the processes (the model itself when alone)."""
        if self.world == 1:
            return model
        return DistributedDataParallel(model, forward_sync_buffers=False)  # buffers are constants here

    def loss(self, result) -> torch.Tensor:
        """The loss to differentiate: the mean over the whole step's target tokens, of which this process holds
        `result.num_target_tokens` (its share, scaled so that averaging over the processes gives the whole step's
        mean)."""
        if self.world == 1:
            return result.loss
        tokens = torch.tensor([float(result.num_target_tokens)], dtype=torch.float64)
        dist.all_reduce(tokens)
        return result.loss_sum * self.world / tokens.clamp(min=1).item()

    def agree(self, value: int) -> int:
        """The lead process's `value`, on every process (the fitted schedule, the decision to stop)."""
        if self.world == 1:
            return value
        held = torch.tensor([int(value)], dtype=torch.int64)
        dist.broadcast(held, 0)
        return int(held.item())

    def wait(self) -> None:
        """Every process here before any goes on (while the lead evaluates, the others wait)."""
        if self.world > 1:
            dist.barrier()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(fn: Callable, procs: int, *args) -> None:
    """`fn(*args, rank=r, world=procs)` in `procs` new processes joined in a gloo group on this machine; an
    exception in any of them is raised here."""
    torch.multiprocessing.spawn(_rank, args=(procs, free_port(), fn, args), nprocs=procs, join=True)


def _rank(rank: int, procs: int, port: int, fn: Callable, args: tuple) -> None:
    _die_with_parent()
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=procs, timeout=WAIT
    )
    try:
        fn(*args, rank=rank, world=procs)
    finally:
        dist.destroy_process_group()


def _die_with_parent() -> None:
    """Linux: this process gets SIGTERM when the one that spawned it dies (killed, it would leave its ranks
    training on); elsewhere nothing."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
