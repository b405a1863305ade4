"""Submit a stage as jobs, and follow, wait for or cancel the jobs of a run directory.

Both executors go through submitit: ``slurm`` renders an sbatch script per submission,
``local`` runs the same callable in a local controller process (whose pid is the job id).
Job states come from ``sacct`` (accounting, so CANCELLED and TIMEOUT are visible) or
``squeue`` on Slurm, and from the process and its result file locally.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import JobPaths

from matra_hpc.errors import MatraError, UsageError
from matra_hpc.launch.call import StageCall, dotted_name, write_spec
from matra_hpc.launch.config import LaunchConfig
from matra_hpc.launch.rundir import (
    cancel_marker_path,
    create_run_dir,
    default_run_dir,
    new_manifest,
    read_manifest,
    read_task_record,
    utc_now,
    write_manifest,
)
from matra_hpc.launch.stages import SubmittableStage

TERMINAL_STATES = {
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL",
    "DEADLINE", "PREEMPTED", "REVOKED", "SPECIAL_EXIT",
}


class RunFailed(MatraError):
    """A job of the run ended in a state other than COMPLETED."""


@dataclass
class JobStatus:
    """One job (or array task) of a run, as ``matra-hpc status`` shows it."""

    job_id: str
    state: str
    started: str | None = None
    ended: str | None = None
    attempts: int = 0
    stdout: str | None = None
    stderr: str | None = None
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.state in TERMINAL_STATES


def submit_stage(
    stage: SubmittableStage,
    config: Any,
    launch: LaunchConfig,
    *,
    run_dir: Path | str | None = None,
    array: int | None = None,
    after: Sequence[Path | str] = (),
    command_line: Sequence[str] | None = None,
) -> Path:
    """Submit ``stage.run(config, ctx)`` as jobs; returns the run directory (jobs not awaited).

    ``array=N`` runs N independent shards (function stages only) with at most
    ``launch.array_parallelism`` at once; ``after`` names run directories whose jobs must
    all succeed first. Everything is checked before the first job is submitted, the stage's
    settings and inputs too (``config.validate()``, unless ``after`` names runs still to come).
    """
    if array is not None and (array < 1 or stage.kind != "function"):
        raise UsageError("--array needs a positive count and a function stage (not torchrun/mpi)")
    if stage.kind == "function" and launch.nodes != 1:
        raise UsageError(f"stage {stage.name} runs one process; it cannot use nodes={launch.nodes}")
    if not after and hasattr(config, "validate"):
        # fail before submitting (with --after the inputs may still come from that run)
        config.validate()
    dependencies = [dependency_jobs(Path(d), launch.cluster) for d in after]
    run_path = create_run_dir(Path(run_dir) if run_dir else default_run_dir(stage.name))
    config_dict = asdict(config)
    spec = {
        "stage": stage.name,
        "kind": stage.kind,
        "run": stage.run,
        "config_cls": dotted_name(stage.config_cls),
        "config": config_dict,
        "launch": launch.to_dict(),
        "run_dir": str(run_path.resolve()),
        "array": array,
    }
    write_spec(run_path, spec)
    manifest = new_manifest(
        stage=stage.name, kind=stage.kind, config=config_dict, launch=launch.to_dict(),
        outputs={k: v for k, v in config_dict.items() if _is_output_field(k) and v is not None},
        after=after, command_line=command_line,
    )
    write_manifest(run_path, manifest)
    call = StageCall(spec)
    if launch.cluster == "slurm":
        jobs = _submit_slurm(call, stage, launch, run_path, array, [j for dep in dependencies for j in dep])
    else:
        for dep_dir in after:
            wait_local_dependency(Path(dep_dir))
        jobs = _submit_local(call, launch, run_path, array, manifest)
    manifest["jobs"] = [_job_entry(job, run_path) for job in jobs]
    if launch.cluster == "local":
        for entry in manifest["jobs"]:
            entry["pid"] = int(entry["job_id"])  # the local controller process
    write_manifest(run_path, manifest)
    return run_path


def _is_output_field(name: str) -> bool:
    return name == "out" or name.startswith("out_") or name.endswith("_out") or name == "output"


def _job_entry(job: submitit.Job, run_path: Path) -> dict[str, Any]:
    paths = JobPaths(run_path / "logs", job.job_id, task_id=0)
    return {
        "job_id": str(job.job_id),
        "state": "SUBMITTED",
        "submitted": utc_now(),
        "stdout": str(paths.stdout),
        "stderr": str(paths.stderr),
    }


class _BatchStepExecutor(submitit.SlurmExecutor):
    """Runs the submitit driver as the batch shell itself (``exec``), for torchrun/MPI jobs.

    Those jobs start their own job steps (srun, mpirun), so the driver must not sit inside
    one. ``--signal=B:USR2@N`` then reaches the driver, which checkpoints and requeues; with
    a plain child of the batch shell the signal would kill the shell instead.
    """

    @property
    def _submitit_command_str(self) -> str:
        return "exec " + super()._submitit_command_str


def _slurm_executor(stage: SubmittableStage, launch: LaunchConfig, run_path: Path) -> submitit.SlurmExecutor:
    executor_cls = submitit.SlurmExecutor if stage.kind == "function" else _BatchStepExecutor
    executor = executor_cls(
        folder=run_path / "logs", python=launch.python or sys.executable, max_num_timeout=launch.max_requeues
    )
    procs = launch.procs_per_node
    if stage.kind == "function":
        tasks_per_node, cpus, use_srun = 1, launch.cpus_per_task, True
    elif stage.kind == "torchrun":
        tasks_per_node, cpus, use_srun = 1, procs * launch.cpus_per_task, False
    else:
        # MPI: one rank per GPU on GPU nodes, else tasks_per_node ranks
        tasks_per_node, cpus, use_srun = procs, launch.cpus_per_task, False
    setup = list(launch.setup) + ([launch.activate] if launch.activate else [])
    executor.update_parameters(
        job_name=f"matra-{stage.name}",
        partition=launch.partition,
        account=launch.account,
        qos=launch.qos,
        nodes=launch.nodes,
        ntasks_per_node=tasks_per_node,
        cpus_per_task=cpus,
        gpus_per_node=launch.gpus_per_node or None,
        mem=launch.mem,
        time=launch.time_minutes,
        signal_delay_s=launch.checkpoint_signal_s,
        setup=setup or None,
        use_srun=use_srun,
        additional_parameters=_sbatch_extras(stage, launch),
    )
    if launch.array_parallelism is not None:
        executor.update_parameters(array_parallelism=launch.array_parallelism)
    return executor


def _sbatch_extras(stage: SubmittableStage, launch: LaunchConfig) -> dict[str, Any]:
    extras: dict[str, Any] = dict(launch.extra_sbatch)
    if stage.kind != "function":
        extras["signal"] = f"B:USR2@{launch.checkpoint_signal_s}"
    return extras


def _submit_slurm(
    call: StageCall,
    stage: SubmittableStage,
    launch: LaunchConfig,
    run_path: Path,
    array: int | None,
    dependency_ids: list[str],
) -> list[submitit.Job]:
    executor = _slurm_executor(stage, launch, run_path)
    if dependency_ids:
        extra = dict(_sbatch_extras(stage, launch), dependency="afterok:" + ":".join(dependency_ids))
        executor.update_parameters(additional_parameters=extra)
    try:
        if array is not None:
            return list(executor.map_array(call, list(range(array))))
        return [executor.submit(call)]
    except submitit.core.utils.FailedJobError as exc:
        raise MatraError(f"sbatch refused the job: {str(exc).strip().splitlines()[-1]}") from None


def _submit_local(
    call: StageCall, launch: LaunchConfig, run_path: Path, array: int | None, manifest: dict[str, Any]
) -> list[submitit.Job]:
    executor = submitit.LocalExecutor(folder=run_path / "logs", max_num_timeout=launch.max_requeues)
    executor.update_parameters(
        timeout_min=launch.time_minutes, signal_delay_s=launch.checkpoint_signal_s, tasks_per_node=1,
        gpus_per_node=launch.gpus_per_node,
    )
    if array is None:
        with _detached_stdio(run_path / "logs" / "controller.log"):
            return [executor.submit(call)]
    # the local executor has no %N cap of its own: start shards in waves of at most the cap
    cap = launch.array_parallelism or array
    jobs: list[submitit.Job] = []
    for index in range(array):
        while sum(1 for job in jobs if _local_alive(int(job.job_id))) >= cap:
            time.sleep(0.2)
        with _detached_stdio(run_path / "logs" / "controller.log"):
            jobs.append(executor.submit(call, index))
        manifest["jobs"] = [_job_entry(job, run_path) for job in jobs]
        write_manifest(run_path, manifest)  # status/cancel see the shards started so far
    return jobs


@contextlib.contextmanager
def _detached_stdio(log: Path) -> Iterator[None]:
    """Point fds 1 and 2 at ``log`` while a local controller starts.

    The controller outlives ``matra-hpc submit --no-wait``; holding the terminal's (or a
    caller's pipe's) stdout would keep a ``| tee`` or a captured run waiting until the job ends.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(log, "ab") as handle:
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def dependency_jobs(run_dir: Path, cluster: str) -> list[str]:
    """Job ids a new Slurm job must wait for (``afterok``); those already completed are dropped.

    Slurm forgets ended jobs after MinJobAge, and ``afterok`` on a forgotten id is refused, so
    the states are checked here; a dependency that already failed stops the submission.
    """
    manifest = read_manifest(run_dir)
    if manifest["launch"]["cluster"] != cluster:
        raise UsageError(f"--after {run_dir}: that run used the {manifest['launch']['cluster']} executor, not {cluster}")
    if not manifest["jobs"]:
        raise UsageError(f"--after {run_dir}: that run has no jobs")
    if cluster != "slurm":
        return []
    statuses = run_status(run_dir)
    bad = [s for s in statuses if s.done and s.state != "COMPLETED"]
    if bad:
        raise RunFailed(f"--after {run_dir}: job {bad[0].job_id} ended {bad[0].state}; not submitting")
    return sorted({s.job_id.split("_")[0] for s in statuses if not s.done})


def wait_local_dependency(run_dir: Path) -> None:
    statuses = wait_run(run_dir)
    bad = [s for s in statuses if s.state != "COMPLETED"]
    if bad:
        raise RunFailed(f"--after {run_dir}: job {bad[0].job_id} ended {bad[0].state}; not starting")


# ---- following a run -------------------------------------------------------------------------


def run_status(run_dir: Path | str) -> list[JobStatus]:
    """The current state of every job of a run; the manifest is updated with it."""
    run_path = Path(run_dir)
    manifest = read_manifest(run_path)
    entries = manifest["jobs"]
    if manifest["launch"]["cluster"] == "slurm":
        live = _slurm_states([e["job_id"] for e in entries])
    else:
        live = {e["job_id"]: _local_state(run_path, e, manifest["kind"]) for e in entries}
    statuses = []
    for entry in entries:
        job_id = entry["job_id"]
        record = read_task_record(run_path, job_id)
        info = live.get(job_id, {})
        state = info.get("state") or entry.get("state", "UNKNOWN")
        status = JobStatus(
            job_id=job_id,
            state=state,
            started=info.get("started") or record.get("started"),
            ended=info.get("ended") or (record.get("ended") if state in TERMINAL_STATES else None),
            attempts=record.get("attempts", 0),
            stdout=entry.get("stdout"),
            stderr=entry.get("stderr"),
        )
        if state != "COMPLETED" and status.done:
            status.error = _job_error(run_path, job_id, record)
        entry.update(state=status.state, started=status.started, ended=status.ended, attempts=status.attempts)
        statuses.append(status)
    write_manifest(run_path, manifest)
    return statuses


def wait_run(run_dir: Path | str, poll_s: float = 2.0, timeout_s: float | None = None) -> list[JobStatus]:
    """Poll until every job of the run has ended; returns their final statuses."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        statuses = run_status(run_dir)
        if statuses and all(s.done for s in statuses):
            return statuses
        if deadline is not None and time.monotonic() > deadline:
            raise MatraError(f"jobs of {run_dir} still running after {timeout_s:.0f} s")
        time.sleep(poll_s)


def cancel_run(run_dir: Path | str, grace_s: float = 15.0) -> list[str]:
    """Stop every job of the run that has not ended; returns the ids that were signalled.

    Slurm: ``scancel`` (Slurm itself sends SIGKILL after KillWait). Local: a marker file, then
    SIGINT to the controller (submitit stops its tasks); whatever of the job's processes is
    still alive after ``grace_s`` is killed with SIGKILL, and the job's record is read again
    for a task that started meanwhile. On return no process of a local job is left.
    """
    run_path = Path(run_dir)
    manifest = read_manifest(run_path)
    statuses = {s.job_id: s for s in run_status(run_path)}
    manifest = read_manifest(run_path)
    pending = [e for e in manifest["jobs"] if not statuses[e["job_id"]].done]
    if not pending:
        return []
    if manifest["launch"]["cluster"] == "slurm":
        ids = [e["job_id"] for e in pending]
        out = subprocess.run(["scancel", *ids], capture_output=True, text=True)
        if out.returncode != 0:
            raise MatraError(f"scancel failed: {out.stderr.strip()}")
    else:
        for entry in pending:
            # a marker file, not a manifest field: a concurrent status/wait rewrites the manifest
            cancel_marker_path(run_path, entry["job_id"]).write_text(utc_now() + "\n")
            try:
                if manifest["kind"] == "program":
                    # started in its own session: the group holds the script and its MPI ranks
                    os.killpg(int(entry["job_id"]), signal.SIGTERM)
                else:
                    # SIGINT makes submitit's local controller stop its tasks and their launchers
                    os.kill(int(entry["job_id"]), signal.SIGINT)
            except ProcessLookupError:
                pass
        for entry in pending:
            _stop_local_job(run_path, entry["job_id"], grace_s)
        run_status(run_path)  # the manifest shows the ended states
    return [e["job_id"] for e in pending]


def _job_processes(run_path: Path, job_id: str) -> set[int]:
    """The live processes of a local job: its controller, its task (from the record), their children."""
    roots = {int(job_id)}
    task_pid = read_task_record(run_path, job_id).get("pid")
    if task_pid:
        roots.add(int(task_pid))
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.add(pid)
        todo += children.get(pid, [])
    return {pid for pid in found if _local_alive(pid)}


def _stop_local_job(run_path: Path, job_id: str, grace_s: float) -> None:
    """Wait ``grace_s`` for a signalled job to end, then SIGKILL what is left, until nothing is."""
    deadline = time.monotonic() + grace_s
    while _job_processes(run_path, job_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    for _ in range(50):  # a task may start (and record its pid) while we kill: look again
        alive = _job_processes(run_path, job_id)
        if not alive:
            return
        for pid in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    raise MatraError(f"job {job_id} still has live processes after SIGKILL: {sorted(_job_processes(run_path, job_id))}")


def _job_error(run_path: Path, job_id: str, record: dict[str, Any]) -> str | None:
    if record.get("error"):
        return str(record["error"])
    manifest = read_manifest(run_path)
    if manifest["kind"] == "program":
        entry = next(e for e in manifest["jobs"] if e["job_id"] == job_id)
        log = Path(entry["stdout"])
        return "".join(log.read_text(errors="replace").splitlines(True)[-20:]) if log.exists() else None
    result = JobPaths(run_path / "logs", job_id, task_id=0).result_pickle
    if result.exists():
        try:
            with result.open("rb") as handle:
                outcome, payload = pickle.load(handle)
            if outcome == "error":
                return str(payload)
        except Exception:  # a half-written result of a killed job
            return None
    return None


def _local_alive(pid: int) -> bool:
    try:
        # reap it first when it is our own child, else a finished job would linger as a zombie
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _local_state(run_path: Path, entry: dict[str, Any], kind: str) -> dict[str, Any]:
    job_id = entry["job_id"]
    if entry.get("state") in TERMINAL_STATES:
        return {"state": entry["state"]}
    if kind == "program":
        exit_file = Path(f"{entry['stdout']}.exit")
        alive = _local_alive(int(job_id))
        if exit_file.exists() and not alive:
            code = exit_file.read_text().strip()
            if code == "0":
                return {"state": "COMPLETED"}
            return {"state": "CANCELLED" if cancel_marker_path(run_path, job_id).exists() else "FAILED"}
        if alive:
            return {"state": "RUNNING"}
        return {"state": "CANCELLED" if cancel_marker_path(run_path, job_id).exists() else "FAILED"}
    result = JobPaths(run_path / "logs", job_id, task_id=0).result_pickle
    alive = _local_alive(int(job_id))
    if result.exists() and not alive:
        try:
            with result.open("rb") as handle:
                outcome, _ = pickle.load(handle)
        except Exception:
            outcome = "error"
        if outcome == "success":
            return {"state": "COMPLETED"}
        return {"state": "CANCELLED" if cancel_marker_path(run_path, job_id).exists() else "FAILED"}
    if alive:
        record = read_task_record(run_path, job_id)
        return {"state": "RUNNING" if record else "PENDING"}
    if cancel_marker_path(run_path, job_id).exists():
        return {"state": "CANCELLED"}
    return {"state": "FAILED"}


def _slurm_states(job_ids: list[str]) -> dict[str, dict[str, Any]]:
    """State, start and end of each job id from sacct, falling back to squeue."""
    if not job_ids:
        return {}
    base_ids = sorted({j.split("_")[0] for j in job_ids})
    states: dict[str, dict[str, Any]] = {}
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-j", ",".join(base_ids), "--format=JobID,State,Start,End"],
        capture_output=True, text=True,
    )
    if out.returncode == 0:
        for line in out.stdout.splitlines():
            parts = line.split("|")
            if len(parts) < 4:
                continue
            for job_id in _expand_array_id(parts[0]):
                states[job_id] = {
                    "state": parts[1].split()[0],  # "CANCELLED by 0" -> CANCELLED
                    "started": None if parts[2] in ("Unknown", "None") else parts[2],
                    "ended": None if parts[3] in ("Unknown", "None") else parts[3],
                }
    missing = [j for j in job_ids if j not in states]
    if missing:
        queue = subprocess.run(
            ["squeue", "-h", "-j", ",".join(base_ids), "-o", "%i|%T"], capture_output=True, text=True
        )
        for line in queue.stdout.splitlines():
            job, _, state = line.partition("|")
            for job_id in _expand_array_id(job):
                states.setdefault(job_id, {"state": state})
    return states


def _expand_array_id(text: str) -> list[str]:
    """``12_[0-3%2]`` -> 12_0 .. 12_3; other ids unchanged."""
    if "_[" not in text:
        return [text]
    base, _, ranges = text.partition("_[")
    ranges = ranges.rstrip("]").split("%")[0]
    ids = []
    for part in ranges.split(","):
        first, _, last = part.partition("-")
        ids += [f"{base}_{i}" for i in range(int(first), int(last or first) + 1)]
    return ids
