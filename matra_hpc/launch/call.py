"""What runs inside a job: rebuild the stage's config, build the context, call the stage.

``StageCall`` is the callable submitit pickles. It holds only the JSON spec (stage entry,
config as a dict, launch settings), never a model or a dataset, so a requeued job starts from
the same small description and the stage resumes from its own files on disk.

- ``function`` jobs: the call runs the stage in the job's process (one per array task).
- ``torchrun``/``mpi`` jobs: the call runs in the batch step and starts torchrun (one per node)
  or the MPI launcher, each process of which runs ``python -m matra_hpc.launch.worker``.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import traceback
import typing
from pathlib import Path
from typing import Any

import submitit

from matra_hpc.errors import UsageError
from matra_hpc.launch import environment
from matra_hpc.launch.rundir import cancel_marker_path, read_task_record, task_record_path, utc_now
from matra_hpc.util import write_json_atomic


class JobFailed(RuntimeError):
    """A launched program (torchrun, MPI ranks) exited non-zero; the message holds its error."""


class JobCancelled(RuntimeError):
    """``cancel`` reached the job before its stage started: nothing ran."""


def import_object(dotted: str) -> Any:
    """``package.module:attribute`` -> the attribute."""
    module_name, _, attribute = dotted.partition(":")
    if not attribute:
        raise UsageError(f"{dotted!r} is not a 'module:attribute' reference")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"cannot import {dotted}: {exc}") from None


def dotted_name(obj: Any) -> str:
    return f"{obj.__module__}:{obj.__qualname__}"


def config_from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a (possibly nested) config dataclass from its ``asdict`` form."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        kwargs[f.name] = _coerce(hints.get(f.name, Any), value)
    return cls(**kwargs)


def _coerce(annotation: Any, value: Any) -> Any:
    if value is None:
        return None
    if dataclasses.is_dataclass(annotation) and isinstance(value, dict):
        return config_from_dict(annotation, value)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        for option in typing.get_args(annotation):
            if option is not type(None) and dataclasses.is_dataclass(option) and isinstance(value, dict):
                return config_from_dict(option, value)
        return value
    if origin is tuple and isinstance(value, list):
        args = typing.get_args(annotation)
        inner = args[0] if args else Any
        return tuple(_coerce(inner, v) for v in value)
    return value


def run_stage_from_spec(spec: dict[str, Any], ctx: Any) -> Any:
    """Rebuild the config and call the stage entry ``run(config, ctx)``."""
    config_cls = import_object(spec["config_cls"])
    config = config_from_dict(config_cls, spec["config"])
    run = import_object(spec["run"])
    return run(config, ctx)


class StageCall(submitit.helpers.Checkpointable):
    """One stage call as a submitit job; requeued on timeout or preemption with the same spec."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec

    def __call__(self, shard: int | None = None) -> Any:
        run_dir = self.spec["run_dir"]
        job_id = environment.submitit_job_id()
        record = read_task_record(run_dir, job_id)
        record.update(
            job_id=job_id,
            host=socket.gethostname(),
            attempts=record.get("attempts", 0) + 1,
            started=record.get("started") or utc_now(),
            last_start=utc_now(),
            state="RUNNING",
            pid=os.getpid(),
        )
        record_path = task_record_path(run_dir, job_id)
        write_json_atomic(record_path, record)
        # Record first, then look for the marker; cancel writes the marker, then reads the
        # record. Whichever comes second sees the other, so a cancel landing while the job
        # starts is never lost: either the job stops here or cancel finds its pid.
        if cancel_marker_path(run_dir, job_id).exists():
            record.update(state="CANCELLED", ended=utc_now())
            write_json_atomic(record_path, record)
            raise JobCancelled(f"job {job_id} was cancelled before its stage started")
        try:
            result = self._run(shard, job_id)
        except BaseException as exc:
            if not isinstance(exc, KeyboardInterrupt | SystemExit):
                record.update(state="FAILED", ended=utc_now(), error=traceback.format_exc())
                write_json_atomic(record_path, record)
            raise
        record.update(state="COMPLETED", ended=utc_now())
        write_json_atomic(record_path, record)
        return result

    def _run(self, shard: int | None, job_id: str) -> Any:
        kind = self.spec["kind"]
        launch = self.spec["launch"]
        if kind == "function":
            shard_info = (shard, self.spec["array"]) if shard is not None else None
            ctx = environment.context_from_environment(
                run_dir=self.spec["run_dir"], gpus_per_node=launch["gpus_per_node"], shard=shard_info
            )
            return run_stage_from_spec(self.spec, ctx)
        errors_dir = Path(self.spec["run_dir"]) / "errors" / job_id
        return run_launcher(launcher_command(self.spec, errors_dir), errors_dir)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        # Same call again: the stage resumes from its own on-disk state, nothing is pickled here.
        return submitit.helpers.DelayedSubmission(StageCall(self.spec), *args, **kwargs)


def launcher_command(spec: dict[str, Any], errors_dir: Path) -> list[str]:
    """The torchrun or MPI command line that starts every worker of a multi-process job."""
    launch = spec["launch"]
    python = sys.executable
    bindir = Path(python).parent
    spec_path = str(Path(spec["run_dir"]) / "spec.json")
    worker = [python, "-m", "matra_hpc.launch.worker", spec_path, "--errors-dir", str(errors_dir)]
    allocation = environment.slurm_allocation()
    nodes = launch["nodes"]
    if spec["kind"] == "torchrun":
        torchrun = [str(bindir / "torchrun"), f"--nproc-per-node={launch['gpus_per_node'] or launch['tasks_per_node']}"]
        if allocation is None:
            return [*torchrun, "--standalone", *worker[1:]]
        endpoint = f"{allocation.head_node}:{environment.rendezvous_port(allocation.job_id)}"
        per_node = [
            *torchrun,
            f"--nnodes={nodes}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={endpoint}",
            f"--rdzv-id={allocation.job_id}",
            *worker[1:],
        ]
        # one torchrun per node; it starts the node's processes and joins the rendezvous
        return ["srun", f"--nodes={nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1", *per_node]
    if spec["kind"] == "mpi":
        return [*mpi_launcher_command(launch, in_allocation=allocation is not None), *worker]
    raise UsageError(f"unknown job kind {spec['kind']!r}")


def mpi_launcher_command(launch: dict[str, Any], in_allocation: bool) -> list[str]:
    """``mpirun -n R`` or ``srun --mpi=pmix --ntasks=R``: the one rule for MPI jobs and programs.

    R = nodes x (GPUs per node, else tasks per node): one rank per GPU on GPU nodes (each rank
    drives its device). ``srun`` only inside a Slurm allocation; mpirun is the one beside this
    Python (the mpich wheel), which under Slurm starts its ranks through the allocation.
    """
    ranks = launch["nodes"] * (launch["gpus_per_node"] or launch["tasks_per_node"])
    if in_allocation and launch["mpi_launcher"] == "srun":
        return ["srun", "--mpi=pmix", f"--ntasks={ranks}", "--kill-on-bad-exit=1"]
    mpirun = Path(sys.executable).parent / "mpirun"
    return [str(mpirun) if mpirun.exists() else "mpirun", "-n", str(ranks)]


def run_launcher(command: list[str], errors_dir: Path) -> dict[str, Any]:
    """Run a launcher in its own process group; on failure raise with the first rank's traceback."""
    errors_dir.mkdir(parents=True, exist_ok=True)
    for stale in errors_dir.glob("rank*.txt"):  # from an attempt before a requeue
        stale.unlink()
    print(f"[matra-hpc] launching: {shlex.join(command)}", flush=True)
    proc = subprocess.Popen(command, start_new_session=True)
    try:
        code = proc.wait()
    except BaseException:
        # cancel / timeout signal: stop every worker, not only the launcher
        _stop_group(proc)
        raise
    if code != 0:
        messages = [p.read_text() for p in sorted(errors_dir.glob("rank*.txt"))]
        detail = messages[0].strip() if messages else "no rank wrote a traceback; see the job log"
        raise JobFailed(f"{Path(command[0]).name} exited with code {code}; first failing rank:\n{detail}")
    return {"launcher": command[0], "exit_code": code}


def _stop_group(proc: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        if proc.poll() is not None:
            return


def write_spec(run_dir: Path, spec: dict[str, Any]) -> Path:
    path = run_dir / "spec.json"
    write_json_atomic(path, spec)
    return path


def read_spec(path: Path | str) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
