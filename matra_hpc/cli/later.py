"""Commands of the later stages (screening, VASP, DFT reports): not built yet, exit 3."""

from __future__ import annotations

import argparse

from matra_hpc.cli._notbuilt import add_not_built


def register(sub: argparse._SubParsersAction) -> None:
    add_not_built(sub, "vasp-prep", "write MP-compatible VASP inputs for the top candidates")
    add_not_built(sub, "dft-report", "collect VASP results into e-hull reports")
