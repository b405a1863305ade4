"""Job arrays of an external program's script (``submit vasp``): sbatch, or bash on the local executor.

The caller renders one script per array (see ``matra_hpc.dft.submit``); this module submits them
into a run directory whose manifest lists every array task as a job, so ``matra-hpc status`` and
``cancel`` work as for any run. Locally the tasks run one after another under one background
bash (the job id is its pid), with ``SLURM_ARRAY_JOB_ID``/``SLURM_ARRAY_TASK_ID`` set as Slurm
would, so the same script runs unchanged.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matra_hpc.errors import MatraError
from matra_hpc.launch.config import LaunchConfig
from matra_hpc.launch.rundir import new_manifest, utc_now, write_manifest

DEFAULT_MAX_ARRAY_SIZE = 1001  # Slurm's default when the configuration cannot be read


def max_array_size() -> int:
    """The cluster's MaxArraySize (array indices must stay below it), from ``scontrol show config``."""
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return DEFAULT_MAX_ARRAY_SIZE
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", out.stdout, re.MULTILINE)
    return int(match.group(1)) if match else DEFAULT_MAX_ARRAY_SIZE


def submit_arrays(
    run_path: Path,
    scripts: Sequence[tuple[Path, int]],
    launch: LaunchConfig,
    *,
    stage: str,
    config: dict[str, Any],
    command_line: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Submit each (script, task count) as one array; returns the job entries (also in the manifest)."""
    slurm = launch.cluster == "slurm"
    entries: list[dict[str, Any]] = []
    if slurm:
        for script, count in scripts:
            out = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True)
            if out.returncode != 0:
                raise MatraError(f"sbatch refused {script}: {out.stderr.strip()}")
            job_id = out.stdout.strip().split(";")[0]
            for index in range(count):
                log = str((run_path / "logs" / f"{job_id}_{index}.log").resolve())
                entries.append({"job_id": f"{job_id}_{index}", "state": "SUBMITTED", "submitted": utc_now(),
                                "stdout": log, "stderr": log})
    else:
        log = str((run_path / "logs" / "job.log").resolve())
        lines = ["rc=0"]
        for script, count in scripts:
            for index in range(count):
                lines.append(f"SLURM_ARRAY_JOB_ID=$$ SLURM_ARRAY_TASK_ID={index} bash {shlex.quote(str(script))} "
                             f">> {shlex.quote(log)} 2>&1 || rc=1")
        lines.append(f"echo $rc > {shlex.quote(log)}.exit")
        wrapper = run_path / "local-array.sh"
        wrapper.write_text("\n".join(lines) + "\n")
        proc = subprocess.Popen(["bash", str(wrapper)], start_new_session=True)
        entries.append({"job_id": str(proc.pid), "state": "SUBMITTED", "submitted": utc_now(), "stdout": log,
                        "stderr": log})
    manifest = new_manifest(stage=stage, kind="program", config=config, launch=launch.to_dict(), outputs={},
                            after=[], command_line=command_line)
    manifest["jobs"] = entries
    write_manifest(run_path, manifest)
    return entries
