"""Helpers of the launch tests: run the CLI as a user does, read what jobs wrote."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path


def cli(*args: str, cwd: Path, timeout: float = 300, ignore_sigint: bool = False) -> subprocess.CompletedProcess:
    """``matra-hpc ARGS`` in a fresh process, as a user runs it (``ignore_sigint``: as ``cmd &`` does)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "matra_hpc", *args], cwd=cwd, capture_output=True, text=True,
        timeout=timeout, env=env,
        preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None,
    )


def read_records(directory: Path, pattern: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(directory.glob(pattern))]


def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())
