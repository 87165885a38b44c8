"""DDP boilerplate and the stop signal in one place; every helper is a no-op in a single process.

Under torchrun (RANK / WORLD_SIZE / LOCAL_RANK set) :func:`setup_dist` initialises the process
group (nccl on GPUs, gloo on CPU). Decisions that every rank must take together (timer save,
stop on a signal, skip a non-finite step) go through :func:`agree_any`; :class:`StopFlag` records
the signal that the step's agreement then shares.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_dist(device_flag: str) -> tuple[DistInfo, torch.device]:
    """Init the process group if launched by torchrun; return (DistInfo, this rank's device).

    ``device_flag`` is 'cpu' or a GPU index; under torchrun a GPU run uses cuda:LOCAL_RANK.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device_flag == "cpu":
        device = torch.device("cpu")
    else:
        if not torch.cuda.is_available():
            raise RuntimeError(f"--device {device_flag} asks for a GPU but CUDA is not available; "
                               "pass --device cpu")
        index = local_rank if world_size > 1 else int(device_flag)
        if index >= torch.cuda.device_count():
            raise RuntimeError(f"GPU {index} does not exist ({torch.cuda.device_count()} visible); "
                               "pass another --device")
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world_size, local_rank), device


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over ranks (in place, returned); identity in a single process."""
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def agree_any(flags: torch.Tensor) -> list[bool]:
    """(K,) float tensor of local 0/1 flags -> K bools, each True if True on ANY rank.

    One small all-reduce and one host sync for all of a step's decisions together."""
    if dist.is_initialized():
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return [v > 0 for v in flags.tolist()]


def gather_objects(obj: Any) -> list[Any]:
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


class StopFlag:
    """First SIGTERM/SIGINT: finish the step, save, exit 0. A later, separate signal: exit at once.

    Signals that arrive together are one stop request: under ``uv run`` a group SIGTERM (``kill --
    -PGID``, SLURM, systemd) reaches this process twice within milliseconds (from the kill and
    forwarded by uv), and Ctrl-C reaches it from the terminal and from uv. Only a signal more than
    ``coalesce_s`` after the first forces the immediate exit."""

    def __init__(self, coalesce_s: float = 1.0, clock=time.monotonic) -> None:
        self.signum: int | None = None
        self.first_at = 0.0
        self.coalesce_s, self.clock = coalesce_s, clock
        self.previous: dict[int, Any] = {}

    def install(self) -> None:
        for s in (signal.SIGTERM, signal.SIGINT):
            self.previous[s] = signal.signal(s, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        now = self.clock()
        if self.signum is None:
            self.signum, self.first_at = signum, now
        elif now - self.first_at > self.coalesce_s:
            os._exit(128 + signum)

    def restore(self) -> None:
        for s, h in self.previous.items():
            signal.signal(s, h)


def ignore_stop_signals_in_worker(_: int = 0) -> None:
    """DataLoader ``worker_init_fn``: a group SIGTERM or Ctrl-C reaches the workers too; they must
    not die (the main process would fail on a dead worker) before the main process has saved."""
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, signal.SIG_IGN)
