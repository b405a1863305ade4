"""What ``submit vasp`` submits: which candidates, packed into which array tasks, by which script.

Pure planning and rendering; the launch layer does the submitting (``matra_hpc.launch.arrays``).

- A first submission takes every ``prepped`` candidate; ``--resubmit`` takes the ``failed`` ones
  and those left ``submitted``/``running`` by a job that has ended (time limit, node failure).
- Candidates are packed ``per_task`` to an array task (thousands of short VASP runs would
  otherwise swamp the scheduler), in tree order, into a task file in the run directory.
- Arrays hold at most the cluster's ``MaxArraySize`` tasks: more tasks become several arrays,
  each script shifting its indices by an offset.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from matra_hpc.dft.config import VaspRunConfig
from matra_hpc.dft.layout import write_json_atomic
from matra_hpc.dft.runner import TASKS_FILE
from matra_hpc.errors import UsageError
from matra_hpc.util import REPO_ROOT, render_template

TEMPLATE = "sbatch/vasp_array.sh.j2"


def run_config_from_profile(vasp: Mapping[str, Any], **overrides: Any) -> VaspRunConfig:
    """The run config from a profile's ``vasp`` mapping (command, gamma_command, potcar_dir)."""
    if not vasp.get("command"):
        raise UsageError("the cluster profile has no vasp.command (how to start VASP, e.g. "
                         "'srun --mpi=pmix vasp_std'); see docs/cluster-setup.md")
    config = VaspRunConfig(vasp_command=str(vasp["command"]), gamma_command=vasp.get("gamma_command"),
                           potcar_dir=vasp.get("potcar_dir"), **overrides)
    config.validate()
    return config


def pick_candidates(
    manifest: dict[str, Any],
    states: dict[str, dict[str, Any]],
    *,
    resubmit: bool,
    job_ended: Callable[[dict[str, Any]], bool],
) -> list[dict[str, Any]]:
    """The manifest entries to submit now, in tree order."""
    picked = []
    for entry in manifest["candidates"]:
        event = states.get(entry["id"], {"status": "prepped"})
        status = event.get("status")
        if status == "prepped":
            picked.append(entry)
        elif resubmit and (status == "failed" or (status in ("submitted", "running") and job_ended(event))):
            picked.append(entry)
    return picked


def pack_tasks(entries: list[dict[str, Any]], per_task: int) -> list[list[str]]:
    if per_task < 1:
        raise UsageError(f"--per-task must be >= 1, got {per_task}")
    dirs = [e["dir"] for e in entries]
    return [dirs[i:i + per_task] for i in range(0, len(dirs), per_task)]


def array_chunks(n_tasks: int, max_array_size: int) -> list[tuple[int, int]]:
    """(offset, count) per array job so no array exceeds MaxArraySize tasks (indices < MaxArraySize)."""
    if max_array_size < 1:
        raise UsageError(f"MaxArraySize must be >= 1, got {max_array_size}")
    return [(start, min(max_array_size, n_tasks - start)) for start in range(0, n_tasks, max_array_size)]


def write_tasks_file(run_dir: Path, tree: Path, manifest: dict[str, Any], config: VaspRunConfig,
                     tasks: list[list[str]]) -> Path:
    path = Path(run_dir) / TASKS_FILE
    write_json_atomic(path, {"tree": str(Path(tree).resolve()), "store": manifest["source"]["path"],
                             "plan": manifest["plan_hash"], "config": asdict(config), "tasks": tasks})
    return path


def render_array_script(
    launch: Mapping[str, Any],
    *,
    tasks_file: str,
    offset: int,
    count: int,
    log_dir: str,
    job_name: str,
    python: str,
    slurm: bool = True,
) -> str:
    """The array job script (no side effects: golden-file tested)."""
    return render_template(
        TEMPLATE, launch=launch, tasks_file=tasks_file, offset=offset, count=count, log_dir=log_dir,
        job_name=job_name, python=python, slurm=slurm, time=launch["time"], code_dir=str(REPO_ROOT),
    )
