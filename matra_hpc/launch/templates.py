"""Job scripts for programs that are not Python functions (VASP, ...), from ``templates/``.

``render_sbatch`` is pure (same inputs, same text), so the scripts are golden-file tested.
``submit_program`` writes the script into a run directory and submits it with ``sbatch`` or,
on the local executor, runs it with bash in the background; the run then works with
``matra-hpc status`` and ``cancel`` like any other.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path

from matra_hpc.errors import MatraError, UsageError
from matra_hpc.launch.call import mpi_launcher_command
from matra_hpc.launch.config import LaunchConfig
from matra_hpc.launch.rundir import create_run_dir, default_run_dir, new_manifest, utc_now, write_manifest
from matra_hpc.launch.submit import dependency_jobs, wait_local_dependency
from matra_hpc.util import render_template


def slurm_time(minutes: int) -> str:
    days, rest = divmod(minutes, 1440)
    return f"{days}-{rest // 60:02d}:{rest % 60:02d}:00"


def mpi_launcher_line(launch: LaunchConfig, slurm: bool) -> str:
    """The launcher prefix of the job script: the same rule as the stages' MPI jobs."""
    return shlex.join(mpi_launcher_command(launch.to_dict(), slurm))


def render_sbatch(
    template: str,
    *,
    launch: LaunchConfig,
    command: Sequence[str],
    workdir: str,
    log: str,
    job_name: str,
    launcher: str,
    slurm: bool = True,
    dependency: str | None = None,
) -> str:
    """The job script of ``templates/<template>`` for these settings (no side effects)."""
    try:
        return render_template(
            template,
            launch=launch,
            command=shlex.join(command),
            workdir=workdir,
            log=log,
            job_name=job_name,
            launcher=launcher,
            slurm=slurm,
            dependency=dependency,
            time=slurm_time(launch.time_minutes),
            ranks=launch.nodes * launch.procs_per_node,
        )
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None



def submit_program(
    command: Sequence[str],
    launch: LaunchConfig,
    *,
    workdir: Path | str,
    name: str = "program",
    run_dir: Path | str | None = None,
    template: str = "sbatch/mpi_program.sh.j2",
    after: Sequence[Path | str] = (),
    command_line: Sequence[str] | None = None,
) -> Path:
    """Run ``command`` on ``nodes x tasks_per_node`` MPI ranks in ``workdir``; returns the run dir."""
    if not Path(workdir).is_dir():
        raise UsageError(f"working directory {workdir} does not exist")
    slurm = launch.cluster == "slurm"
    dependency_ids = [j for d in after for j in dependency_jobs(Path(d), launch.cluster)]
    for dep_dir in after if not slurm else ():
        wait_local_dependency(Path(dep_dir))
    run_path = create_run_dir(Path(run_dir) if run_dir else default_run_dir(name))
    log = str((run_path / "logs" / "job.log").resolve())
    script = render_sbatch(
        template,
        launch=launch,
        command=command,
        workdir=str(Path(workdir).resolve()),
        log=log,
        job_name=f"matra-{name}",
        launcher=mpi_launcher_line(launch, slurm),
        slurm=slurm,
        dependency="afterok:" + ":".join(dependency_ids) if dependency_ids else None,
    )
    script_path = run_path / "job.sh"
    script_path.write_text(script)
    manifest = new_manifest(
        stage=name, kind="program", config={"command": list(command), "workdir": str(workdir), "template": template},
        launch=launch.to_dict(), outputs={}, after=after, command_line=command_line,
    )
    if slurm:
        out = subprocess.run(["sbatch", "--parsable", str(script_path)], capture_output=True, text=True)
        if out.returncode != 0:
            raise MatraError(f"sbatch refused {script_path}: {out.stderr.strip()}")
        job_id = out.stdout.strip().split(";")[0]
    else:
        # exit code kept beside the log: the local status reads it after the process is gone
        wrapper = f"bash {shlex.quote(str(script_path))} >> {shlex.quote(log)} 2>&1; echo $? > {shlex.quote(log)}.exit"
        proc = subprocess.Popen(["bash", "-c", wrapper], start_new_session=True)
        job_id = str(proc.pid)
    manifest["jobs"] = [{"job_id": job_id, "state": "SUBMITTED", "submitted": utc_now(), "stdout": log, "stderr": log}]
    write_manifest(run_path, manifest)
    return run_path
