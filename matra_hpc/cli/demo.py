"""`matra-hpc demo`: placeholder until the stage is built."""

from __future__ import annotations

import argparse

from matra_hpc.cli._notbuilt import add_not_built


def register(sub: argparse._SubParsersAction) -> None:
    add_not_built(sub, "demo", "run the README demo end to end on the local executor")
