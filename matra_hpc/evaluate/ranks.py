"""Rank helpers of the evaluation stages (MPI optional: ``ctx.comm`` is None in one process)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from matra_hpc.context import RunContext
from matra_hpc.errors import MatraError


def on_rank0(ctx: RunContext, fn: Callable[..., Any], *args: Any) -> Any:
    """Run fn on rank 0 and hand its result (or its error) to every rank, so none waits forever."""
    result, error = None, None
    if ctx.rank == 0:
        try:
            result = fn(*args)
        except Exception as exc:  # re-raised below on every rank
            error = exc
    if ctx.comm is not None and ctx.world_size > 1:
        text = None if error is None else f"{type(error).__name__}: {error}"
        result, text = ctx.comm.bcast((result, text), root=0)
        if ctx.rank != 0 and text is not None:
            raise MatraError(f"rank 0 failed: {text}")
    if error is not None:
        raise error
    return result
