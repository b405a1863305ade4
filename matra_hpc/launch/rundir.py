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
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matra_hpc.errors import UsageError
from matra_hpc.util import git_revision, write_json_atomic

MANIFEST = "manifest.json"
SCHEMA = "matra-hpc/run/1"


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def default_run_dir(stage: str, root: Path | str = "runs") -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return Path(root) / f"{stamp}-{stage}"


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


def new_manifest(
    *,
    stage: str,
    kind: str,
    config: dict[str, Any],
    launch: dict[str, Any],
    outputs: dict[str, Any],
    after: Sequence[Path | str],
    command_line: Sequence[str] | None,
) -> dict[str, Any]:
    """The manifest of a submission before its jobs exist (``jobs`` is filled in after)."""
    return {
        "schema": SCHEMA,
        "stage": stage,
        "kind": kind,
        "command_line": shlex.join(command_line) if command_line is not None else None,
        "config": config,
        "launch": launch,
        "outputs": outputs,
        "git_revision": git_revision(),
        "after": [str(Path(d).resolve()) for d in after],
        "submitted": utc_now(),
        "jobs": [],
    }


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


def cancel_marker_path(run_dir: Path | str, job_id: str) -> Path:
    """Written by ``cancel`` before it signals a local job; a job that starts later sees it."""
    return Path(run_dir) / "tasks" / f"{job_id}.cancelled"


def task_record_path(run_dir: Path | str, job_id: str) -> Path:
    return Path(run_dir) / "tasks" / f"{job_id}.json"


def read_task_record(run_dir: Path | str, job_id: str) -> dict[str, Any]:
    path = task_record_path(run_dir, job_id)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
