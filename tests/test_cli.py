"""The command line itself: help lists the stages, unbuilt stages say so."""

from __future__ import annotations

import subprocess
import sys

import pytest

from matra_hpc.cli import main


def test_help_lists_stage_commands() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "matra_hpc", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in ["demo", "tokens", "data", "train", "generate", "screen", "report", "status", "cancel", "submit"]:
        assert name in out


@pytest.mark.parametrize("command", ["vasp-prep", "dft-report"])
def test_unbuilt_stage_exits_3(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command]) == 3
    assert "not built yet" in capsys.readouterr().err


def test_submit_lists_the_launch_smoke_stages() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "matra_hpc", "submit", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in ["smoke", "smoke-mpi", "smoke-ddp"]:
        assert name in out
