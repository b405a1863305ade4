"""The small context the launch layer hands to stage code.

Stage code never reads ``SLURM_*``/``OMPI_*``/``RANK`` variables itself: the launch layer
(``matra_hpc.launch``) is the only place that turns a scheduler's environment into this.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from matra_hpc.errors import MatraError

T = TypeVar("T")


@dataclass
class RunContext:
    """Where this process sits in a (possibly distributed) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    # mpi4py communicator when the stage runs under MPI, else None.
    comm: Any = field(default=None, repr=False)
    # The run directory of the submission, when there is one.
    run_dir: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _torch_group(self) -> Any:
        """torch.distributed when a torchrun stage has initialised it, else None."""
        dist = sys.modules.get("torch.distributed")  # never import torch for an MPI or serial stage
        if dist is not None and dist.is_available() and dist.is_initialized():
            return dist
        return None

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank: over MPI, or torch.distributed under torchrun.

        Without either (one process, or independent array tasks) each process keeps its own.
        """
        if self.world_size <= 1:
            return obj
        if self.comm is not None:
            return self.comm.bcast(obj, root=0)
        dist = self._torch_group()
        if dist is not None:
            box = [obj]
            dist.broadcast_object_list(box, src=0)
            return box[0]
        return obj

    def on_rank0(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """Run ``fn`` on rank 0 only and hand its result, or its error, to every rank.

        Rank 0 re-raises its own exception; the others raise ``MatraError("rank 0 failed: ...")``,
        so no rank waits forever on a collective rank 0 never reaches. Without a communicator
        (independent array tasks) the other ranks get None.
        """
        result, error = None, None
        if self.rank == 0:
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:  # re-raised on every rank below
                error = exc
        result, error_text = self.broadcast(
            (result, None if error is None else f"{type(error).__name__}: {error}")
        )
        if error is not None:
            raise error
        if error_text is not None:
            raise MatraError(f"rank 0 failed: {error_text}")
        return result


def local_context() -> RunContext:
    """A single-process context: what a bare stage command runs with."""
    return RunContext()
