"""Job scripts of external programs: the pure render function against golden files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from matra_hpc.launch import resolve_launch_config
from matra_hpc.launch.templates import render_sbatch

GOLDEN = Path(__file__).parent / "golden"


def _render(profile: str, slurm: bool, **extra: object) -> str:
    launch = resolve_launch_config(profile)
    return render_sbatch(
        "sbatch/mpi_program.sh.j2",
        launch=launch,
        command=["vasp_std"],
        workdir="/scratch/run 1/mp-149",
        log="/scratch/runs/r1/logs/job.log",
        job_name="matra-vasp",
        launcher="srun --mpi=pmix --ntasks=8 --kill-on-bad-exit=1" if slurm else "mpirun -n 8",
        slurm=slurm,
        **extra,
    )


@pytest.mark.parametrize(
    ("golden", "profile", "slurm", "extra"),
    [
        ("mpi_program_gpu_cluster.sh", "example-gpu", True, {"dependency": "afterok:41:42"}),
        ("mpi_program_localci.sh", "localci", True, {}),
        ("mpi_program_local.sh", "localci", False, {}),
    ],
)
def test_rendered_script_matches_golden_file(golden: str, profile: str, slurm: bool, extra: dict) -> None:
    text = _render(profile, slurm, **extra)
    path = GOLDEN / golden
    if os.environ.get("MATRA_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()
    assert _render(profile, slurm, **extra) == text  # pure: same inputs, same script
