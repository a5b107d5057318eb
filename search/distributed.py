"""Scale-out over torch.distributed (SPEC 5, Scale-out): the one module that knows ranks.

Under `torchrun` (RANK and WORLD_SIZE set) `World.from_environment()` joins the process
group (NCCL when CUDA is there, gloo otherwise); without it the world is this one process
and every collective is the identity, so the engine runs one code path either way.

The engine uses four collectives: `broadcast` (rank 0's plan of a generation, its
checkpoint state), `gather` (every rank's result, in rank order), `all_reduce_sum` (the
super-net write-back: sums and counts per element) and `barrier`.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def _attempt_store(rank: int, size: int, timeout: timedelta) -> dist.Store:
    """The rendezvous store of this attempt of the worker group. torchrun keeps one store
    across the restarts of `--max-restarts`, so the keys a process group leaves there
    (each rank's address) would be read again by the next attempt, which then connects to
    the dead workers of the last one: each attempt gets keys of its own."""
    agent_hosts_it = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), size,
                          is_master=rank == 0 and not agent_hosts_it, timeout=timeout)
    return dist.PrefixStore(f"/genomec/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


class World:
    def __init__(self, rank: int = 0, size: int = 1, local_rank: int = 0, backend: str | None = None):
        self.rank, self.size, self.local_rank, self.backend = rank, size, local_rank, backend

    @classmethod
    def from_environment(cls, timeout_minutes: float = 60) -> "World":
        """The torchrun world, or a world of one process."""
        if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
            return cls()
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        if not dist.is_initialized():
            rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
            timeout = timedelta(minutes=timeout_minutes)
            dist.init_process_group(backend, store=_attempt_store(rank, size, timeout), rank=rank, world_size=size, timeout=timeout)
        return cls(dist.get_rank(), dist.get_world_size(), local_rank, backend)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def device(self, requested: str) -> torch.device:
        """The device of this rank: "auto" is CUDA (this rank's GPU) when there is one."""
        if requested == "auto":
            requested = "cuda" if torch.cuda.is_available() else "cpu"
        if requested == "cuda":
            return torch.device("cuda", self.local_rank if self.distributed else torch.cuda.current_device())
        return torch.device(requested)

    def broadcast(self, value=None):
        """Rank 0's `value` on every rank (any picklable object)."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value) -> list:
        """Every rank's `value`, in rank order, on every rank."""
        if not self.distributed:
            return [value]
        values = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` summed over the ranks, in place."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()
