"""Fixtures of the launch tests: the real local Slurm, started when it is not running."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def slurm_is_up() -> bool:
    try:
        out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "UP" in out.stdout


@pytest.fixture(scope="session")
def slurm() -> None:
    """A running local Slurm; started by scripts/slurm-up.sh when down. Never skips: fails."""
    if slurm_is_up():
        return
    out = subprocess.run(["bash", str(REPO / "scripts" / "slurm-up.sh")], capture_output=True, text=True)
    if out.returncode != 0 or not slurm_is_up():
        pytest.fail(f"could not start the local Slurm (scripts/slurm-up.sh):\n{out.stdout}\n{out.stderr}")


