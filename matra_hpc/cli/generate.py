"""`matra-hpc generate`: placeholder until the stage is built."""

from __future__ import annotations

import argparse

from matra_hpc.cli._notbuilt import add_not_built


def register(sub: argparse._SubParsersAction) -> None:
    add_not_built(sub, "generate", "sample crystals in this process")
