"""Fixtures of the screen tests: the embedded SevenNet (7net-0, offline) loaded once."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def sevennet():
    from matra_hpc.screen.potentials import load_potential

    return load_potential("sevennet")
