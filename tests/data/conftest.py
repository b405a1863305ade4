"""Fixtures of the data-stage tests."""

from __future__ import annotations

import pytest
from data_inputs import flla_rows


@pytest.fixture(scope="session")
def flla40() -> list:
    return flla_rows(40)
