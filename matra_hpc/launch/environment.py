"""The only module that reads scheduler and launcher environment variables.

Slurm (``SLURM_*``), torchrun (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``) and MPI
(``PMI_*``/``OMPI_*``/``PMIX_*``) each describe the process's place in a run their own way;
``context_from_environment`` turns whichever is present into a ``RunContext``. Stage code only
ever sees that context.
"""

from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass

from matra_hpc.context import RunContext

_MPI_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MPI_LOCALRANKID")


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "LOCAL_RANK" in os.environ)


def under_mpi() -> bool:
    return any(name in os.environ for name in _MPI_RANK_VARS)


def context_from_environment(
    run_dir: str | None = None, gpus_per_node: int = 0, shard: tuple[int, int] | None = None
) -> RunContext:
    """The context of this process.

    ``shard=(index, count)`` is given for a task of a job array: independent shards see
    ``rank=index, world_size=count`` and no communicator.
    """
    if shard is not None:
        index, count = shard
        return RunContext(rank=index, world_size=count, local_rank=0, device=_device(gpus_per_node, 0),
                          run_dir=run_dir)
    if under_torchrun():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        return RunContext(
            rank=int(os.environ["RANK"]),
            world_size=int(os.environ["WORLD_SIZE"]),
            local_rank=local_rank,
            device=_device(gpus_per_node, local_rank),
            run_dir=run_dir,
        )
    if under_mpi():
        from mpi4py import MPI  # imported only under MPI: it initialises the MPI runtime

        comm = MPI.COMM_WORLD
        local_comm = comm.Split_type(MPI.COMM_TYPE_SHARED)
        local_rank = local_comm.Get_rank()
        local_comm.Free()
        return RunContext(
            rank=comm.Get_rank(),
            world_size=comm.Get_size(),
            local_rank=local_rank,
            device=_device(gpus_per_node, local_rank),
            comm=comm,
            run_dir=run_dir,
        )
    return RunContext(rank=0, world_size=1, local_rank=0, device=_device(gpus_per_node, 0), run_dir=run_dir)


def _device(gpus_per_node: int, local_rank: int) -> str:
    return f"cuda:{local_rank % gpus_per_node}" if gpus_per_node > 0 else "cpu"


@dataclass(frozen=True)
class Allocation:
    """The Slurm allocation this process runs in (None fields when not under Slurm)."""

    job_id: str | None
    nodes: list[str]

    @property
    def head_node(self) -> str:
        return self.nodes[0] if self.nodes else socket.gethostname()


def slurm_allocation() -> Allocation | None:
    """The current Slurm job and its node list, or None outside Slurm."""
    job_id = os.environ.get("SLURM_JOB_ID")
    if job_id is None:
        return None
    nodelist = os.environ.get("SLURM_JOB_NODELIST", "")
    nodes: list[str] = []
    if nodelist:
        # scontrol expands compressed lists such as node[01-04] exactly as Slurm means them
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True)
        nodes = out.stdout.split() if out.returncode == 0 else [nodelist]
    return Allocation(job_id=job_id, nodes=nodes)


def rendezvous_port(job_id: str | None) -> int:
    """A port per job, so two torchrun jobs sharing a node do not collide."""
    return 29500 + (int(job_id.split("_")[0]) % 2000 if job_id and job_id.split("_")[0].isdigit() else 0)


def submitit_job_id() -> str:
    """The id of the submitit job this process runs in (``123`` or ``123_4`` for array tasks)."""
    import submitit

    return str(submitit.JobEnvironment().job_id)
