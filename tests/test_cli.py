"""The command line itself: help lists the stages, bad input is a usage error."""

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


def test_submit_lists_the_launch_smoke_stages() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "matra_hpc", "submit", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in ["smoke", "smoke-mpi", "smoke-ddp"]:
        assert name in out


def test_screen_bad_input_is_a_usage_error(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["screen", str(tmp_path / "missing.zarr"), "--out", str(tmp_path / "s.zarr")]) == 2
    assert "is not a Zarr store" in capsys.readouterr().err
    assert not (tmp_path / "s.zarr").exists()
