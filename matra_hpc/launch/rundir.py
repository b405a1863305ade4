"""Run directories: ``manifest.json``, job logs and per-task records of one submission.

Layout::

    RUN_DIR/manifest.json     what was submitted, where, and the last known job states
    RUN_DIR/logs/             submitit logs and result pickles, one set per job (array task)
    RUN_DIR/tasks/KEY.json    written by the job itself: host, attempts, start/end times, error
    RUN_DIR/spec.json         the stage call the workers rebuild (stage, config, launch)

The manifest is rewritten whole, atomically (temporary file, then rename), so a reader never
sees half of it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from matra_hpc.errors import UsageError

MANIFEST = "manifest.json"
SCHEMA = "matra-hpc/run/1"
_REPO_ROOT = Path(__file__).resolve().parents[2]


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def default_run_dir(stage: str, root: Path | str = "runs") -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return Path(root) / f"{stamp}-{stage}"


def git_revision() -> str | None:
    """The commit of the code that submitted, with ``-dirty`` when the tree has changes."""
    try:
        rev = subprocess.run(
            ["git", "-C", str(_REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(_REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10,
        )
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


def create_run_dir(path: Path) -> Path:
    """A new, empty run directory; an existing manifest is never overwritten."""
    path = Path(path)
    if (path / MANIFEST).exists():
        raise UsageError(f"{path} already holds a run (manifest.json exists); pick another --run-dir")
    if path.exists() and not path.is_dir():
        raise UsageError(f"--run-dir {path} exists and is not a directory")
    (path / "logs").mkdir(parents=True, exist_ok=True)
    (path / "tasks").mkdir(exist_ok=True)
    return path


def read_manifest(run_dir: Path | str) -> dict[str, Any]:
    """The manifest of a run directory; UsageError when the path is not one."""
    path = Path(run_dir)
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise UsageError(f"{path} is not a run directory (no {MANIFEST})")
    try:
        data = json.loads(manifest.read_text())
    except json.JSONDecodeError as exc:
        raise UsageError(f"{manifest} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise UsageError(f"{manifest} is not a matra-hpc run manifest (schema {SCHEMA})")
    return data


def write_manifest(run_dir: Path | str, manifest: dict[str, Any]) -> None:
    write_json_atomic(Path(run_dir) / MANIFEST, manifest)


def task_record_path(run_dir: Path | str, job_id: str) -> Path:
    return Path(run_dir) / "tasks" / f"{job_id}.json"


def read_task_record(run_dir: Path | str, job_id: str) -> dict[str, Any]:
    path = task_record_path(run_dir, job_id)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
