"""Fixtures of the generate tests: a reference run (the checkpoint fixture is tests/conftest.py's)."""

from __future__ import annotations

from pathlib import Path

import pytest
from generate_helpers import GEN_ARGS


@pytest.fixture(scope="session")
def reference_store(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference generation, run in this process as the bare command does."""
    from matra_hpc.cli import main

    out = tmp_path_factory.mktemp("ref") / "gen.zarr"
    assert main(["generate", "--checkpoint", str(checkpoint), "--out", str(out), *GEN_ARGS]) == 0
    return out


