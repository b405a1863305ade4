"""Smoke stages: small real jobs that prove each job kind works on a cluster.

``matra-hpc submit smoke`` (a function job, or an array with ``--array N``), ``smoke-mpi``
(mpi4py ranks exchange data) and ``smoke-ddp`` (torchrun, one DDP step with gloo or NCCL).
Each writes JSON records under ``OUT`` (default ``RUN_DIR/smoke``) that the tests and a user
can read. ``smoke`` checkpoints its progress after every step, so a requeued job resumes.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matra_hpc.context import RunContext
from matra_hpc.errors import UsageError
from matra_hpc.util import write_json_atomic


@dataclass
class SmokeConfig:
    steps: int = 1
    step_seconds: float = 0.0
    fail: bool = False
    """Raise after the steps: shows how a failing job's traceback reaches the user."""
    out: str | None = None


@dataclass
class MpiSmokeConfig:
    values: int = 1000
    steps: int = 0
    """Checkpointed steps before the exchange (as in ``smoke``), to test requeues of MPI jobs."""
    step_seconds: float = 0.0
    out: str | None = None


@dataclass
class DdpSmokeConfig:
    seed: int = 0
    out: str | None = None


def _out_dir(out: str | None, ctx: RunContext) -> Path:
    if out is None and ctx.run_dir is None:
        raise UsageError("smoke stages need --out when run outside a run directory")
    path = Path(out) if out is not None else Path(ctx.run_dir) / "smoke"  # type: ignore[arg-type]
    path.mkdir(parents=True, exist_ok=True)
    return path


def _identity(ctx: RunContext) -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "rank": ctx.rank,
        "world_size": ctx.world_size,
        "local_rank": ctx.local_rank,
        "device": ctx.device,
    }


def _checkpointed_steps(out: Path, rank: int, steps: int, step_seconds: float) -> dict[str, Any]:
    """Sleep through ``steps`` steps, saving progress after each, resuming saved progress."""
    progress_path = out / f"progress-rank{rank}.json"
    progress = json.loads(progress_path.read_text()) if progress_path.exists() else {"done": 0, "starts": []}
    progress["starts"].append(progress["done"])  # where each attempt (first run, requeues) began
    write_json_atomic(progress_path, progress)
    while progress["done"] < steps:
        time.sleep(step_seconds)
        progress["done"] += 1
        write_json_atomic(progress_path, progress)
    return progress


def run_smoke(config: SmokeConfig, ctx: RunContext) -> dict[str, Any]:
    """Do ``steps`` steps of ``step_seconds`` each, saving progress after each step."""
    began = time.time()
    out = _out_dir(config.out, ctx)
    progress = _checkpointed_steps(out, ctx.rank, config.steps, config.step_seconds)
    if config.fail:
        raise RuntimeError("smoke stage failed on purpose (--fail)")
    record = {
        **_identity(ctx),
        "steps_done": progress["done"],
        "starts": progress["starts"],
        "began": began,  # this attempt's start and end, epoch seconds (tests check overlaps)
        "finished": time.time(),
    }
    write_json_atomic(out / f"rank{ctx.rank}.json", record)
    return record


def run_smoke_mpi(config: MpiSmokeConfig, ctx: RunContext) -> dict[str, Any]:
    """Each rank sends an array to the next rank in a ring and joins an allreduce."""
    import numpy as np

    if ctx.comm is None:
        raise UsageError("smoke-mpi needs MPI ranks (submit it, or run it under mpirun)")
    out = _out_dir(config.out, ctx)
    progress = _checkpointed_steps(out, ctx.rank, config.steps, config.step_seconds)
    comm = ctx.comm
    send = np.full(config.values, float(ctx.rank), dtype=np.float64)
    recv = np.empty_like(send)
    right, left = (ctx.rank + 1) % ctx.world_size, (ctx.rank - 1) % ctx.world_size
    comm.Sendrecv(send, dest=right, recvbuf=recv, source=left)
    total = comm.allreduce(ctx.rank)
    record = {
        **_identity(ctx),
        "received_from": left,
        "received_sum": float(recv.sum()),
        "allreduce_rank_sum": int(total),
        "steps_done": progress["done"],
        "starts": progress["starts"],
    }
    write_json_atomic(out / f"mpi-rank{ctx.rank}.json", record)
    comm.Barrier()
    return record


def ddp_smoke_model_and_batch(seed: int, rank: int) -> tuple[Any, Any, Any]:
    """The tiny model (identical on every rank) and this rank's batch; tests rebuild them."""
    import torch

    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 1)
    generator = torch.Generator().manual_seed(seed + 1000 + rank)
    inputs = torch.randn(8, 4, generator=generator)
    targets = torch.randn(8, 1, generator=generator)
    return model, inputs, targets


def run_smoke_ddp(config: DdpSmokeConfig, ctx: RunContext) -> dict[str, Any]:
    """One DistributedDataParallel step; every rank records the averaged gradient it holds."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    backend = "nccl" if ctx.device.startswith("cuda") else "gloo"
    # torchrun provides the rendezvous address; rank and size come from the context
    dist.init_process_group(backend=backend, rank=ctx.rank, world_size=ctx.world_size)
    try:
        model, inputs, targets = ddp_smoke_model_and_batch(config.seed, ctx.rank)
        model = model.to(ctx.device)
        ddp = DistributedDataParallel(model, device_ids=[ctx.local_rank] if backend == "nccl" else None)
        loss = torch.nn.functional.mse_loss(ddp(inputs.to(ctx.device)), targets.to(ctx.device))
        loss.backward()
        grads = [p.grad.detach().cpu().flatten().tolist() for p in model.parameters()]
        record = {**_identity(ctx), "backend": backend, "local_loss": float(loss.detach()), "grads": grads}
        write_json_atomic(_out_dir(config.out, ctx) / f"ddp-rank{ctx.rank}.json", record)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return record
