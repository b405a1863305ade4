"""Shared test fixtures."""

from __future__ import annotations

import os

# Two cores in CI: keep torch/BLAS from oversubscribing when tests run processes side by side.
os.environ.setdefault("OMP_NUM_THREADS", "1")
