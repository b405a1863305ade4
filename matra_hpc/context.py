"""The small context the launch layer hands to stage code.

Stage code never reads ``SLURM_*``/``OMPI_*``/``RANK`` variables itself: the launch layer
(``matra_hpc.launch``) is the only place that turns a scheduler's environment into this.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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


def local_context() -> RunContext:
    """A single-process context: what a bare stage command runs with."""
    return RunContext()
