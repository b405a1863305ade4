"""Launch layer: the one place that knows about Slurm, MPI and torchrun.

Public API (see docs/architecture.md):

- ``resolve_launch_config(profile, overrides) -> LaunchConfig`` and ``load_profile(name)``
- ``submit_stage(stage, config, launch, run_dir=, array=, after=, command_line=) -> Path``
- ``run_status(run_dir)``, ``wait_run(run_dir)``, ``cancel_run(run_dir)``, ``read_manifest(run_dir)``
- ``submit_program(...)`` / ``render_sbatch(...)``: external programs (VASP) from templates/
- ``context_from_environment(...)``: the RunContext of the current process
"""

from matra_hpc.launch.config import LaunchConfig, load_profile, parse_time_minutes, resolve_launch_config
from matra_hpc.launch.environment import context_from_environment
from matra_hpc.launch.rundir import read_manifest
from matra_hpc.launch.submit import JobStatus, RunFailed, cancel_run, run_status, submit_stage, wait_run

__all__ = [
    "JobStatus",
    "LaunchConfig",
    "RunFailed",
    "cancel_run",
    "context_from_environment",
    "load_profile",
    "parse_time_minutes",
    "read_manifest",
    "resolve_launch_config",
    "run_status",
    "submit_stage",
    "wait_run",
]
