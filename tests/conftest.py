"""Shared test fixtures."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

# Two cores in CI: keep torch/BLAS from oversubscribing when tests run processes side by side.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]


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

_MARKERS = ("slurm", "mpi", "slow")
_outcomes: dict[str, dict[str, int]] = {m: {} for m in _MARKERS}


def pytest_runtest_logreport(report) -> None:  # noqa: ANN001 - pytest hook signature
    # Count each marked test once, by its call outcome (or setup failure/skip).
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        for marker in _MARKERS:
            if marker in report.keywords:
                counts = _outcomes[marker]
                counts[report.outcome] = counts.get(report.outcome, 0) + 1


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001 - pytest hook signature
    # CI must show that the real Slurm, mpirun and whole-data-set tests actually ran.
    for marker in _MARKERS:
        counts = _outcomes[marker]
        text = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items())) or "none ran"
        terminalreporter.write_line(f"marker {marker}: {text}")
