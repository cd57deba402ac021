"""The processes of a data-parallel fit: who this process is, and the collectives it uses.

A data-parallel fit runs P processes, each holding a shard of the rows; random effects,
covariances and network weights are replicated. The processes are started by torch's launcher
(``torchrun --nproc-per-node P ...``), which sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT`` in each one. :func:`start` joins both frameworks' process groups on them: torch's
(gloo for CPU tensors, NCCL for CUDA ones) for the network's gradients and the M-step's row sums, and
JAX's multi-process runtime (gloo collectives on CPU) for the E-step, whose log density sums over
every process's rows inside the compiled sampler (:mod:`~gmenn_formula.estep.sharded`). JAX's
coordinator listens on ``MASTER_PORT + 1`` unless ``GMENN_JAX_COORDINATOR`` (host:port) says otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from gmenn_formula.errors import DistributedError

if TYPE_CHECKING:
    import torch

JAX_COORDINATOR = "GMENN_JAX_COORDINATOR"
Summed = TypeVar("Summed")


@dataclass(frozen=True)
class ProcessGroup:
    """This process's ``rank`` among ``size`` processes (rank 0 writes the results)."""

    rank: int
    size: int

    @property
    def leader(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> ProcessGroup:
        """The group torchrun described in ``RANK`` and ``WORLD_SIZE`` (one process of one when unset)."""
        environ = os.environ if environ is None else environ
        try:
            rank, size = int(environ.get("RANK", "0")), int(environ.get("WORLD_SIZE", "1"))
        except ValueError as exc:
            raise DistributedError(f"RANK and WORLD_SIZE must be integers (got RANK={environ.get('RANK')!r}, WORLD_SIZE={environ.get('WORLD_SIZE')!r}).") from exc
        if size < 1 or not 0 <= rank < size:
            raise DistributedError(f"RANK={rank} is not a process of WORLD_SIZE={size}: start the processes with torchrun.")
        return cls(rank, size)


def start(group: ProcessGroup, environ: dict[str, str] | None = None) -> None:
    """Join torch's and JAX's process groups (a group of one needs neither and joins none)."""
    if group.size == 1:
        return
    environ = os.environ if environ is None else environ
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not environ.get(name)]
    if missing:
        raise DistributedError(f"{' and '.join(missing)} unset: start the processes with torchrun, which sets them.")
    import torch
    import torch.distributed as dist

    from gmenn_formula.estep.runtime import configure_jax

    if not dist.is_initialized():
        dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo", rank=group.rank, world_size=group.size)
    configure_jax()
    import jax

    if not jax.distributed.is_initialized():
        coordinator = environ.get(JAX_COORDINATOR) or f"{environ['MASTER_ADDR']}:{int(environ['MASTER_PORT']) + 1}"
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=group.size, process_id=group.rank)


def gather_objects(value: Any, group: ProcessGroup) -> list[Any]:
    """Every process's ``value`` (picklable), in rank order."""
    if group.size == 1:
        return [value]
    import torch.distributed as dist

    gathered: list[Any] = [None] * group.size
    dist.all_gather_object(gathered, value)
    return gathered


def largest_over_processes(local: int, data_parallel: bool) -> int:
    """The largest of every process's ``local`` in a data-parallel fit (an all-reduce of torch's
    group); ``local`` itself otherwise."""
    if not data_parallel:
        return local
    import torch
    import torch.distributed as dist

    value = torch.tensor([local], dtype=torch.int64)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return int(value)


def stop() -> None:
    """Leave torch's and JAX's process groups (where joined), e.g. before a torchrun job's processes exit."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    import jax

    if jax.distributed.is_initialized():
        jax.distributed.shutdown()


def sum_arrays(local: np.ndarray) -> np.ndarray:
    """The sum over the processes of torch's group of the numpy array ``local`` (same shape
    everywhere), in float64: the all-reduce of the log-likelihood's importance sampler."""
    import torch

    return sum_tensors(torch.from_numpy(np.ascontiguousarray(local, dtype=np.float64))).numpy()


def single_shard(local: Summed) -> Summed:
    """The sum over every shard when this process holds all the rows: ``local`` itself (a torch
    tensor or a numpy array)."""
    return local


def sum_tensors(local: "torch.Tensor") -> "torch.Tensor":
    """The sum over the processes of torch's group of ``local`` (same shape everywhere; a new tensor,
    on ``local``'s device and in its dtype): what :class:`~gmenn_formula.mstep.step.Rows` sums
    row statistics with in a data-parallel fit."""
    import torch.distributed as dist

    total = local.detach().clone()
    dist.all_reduce(total)
    return total
