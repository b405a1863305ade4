"""Entry points of the DFT stage: ``run_vasp_prep(config, ctx)`` and ``run_dft_report(config, ctx)``.

Contract (docs/contracts.md, section L): vasp-prep reads a screened store (section J) and writes
a VASP tree; the job array (``submit vasp``) runs each candidate under custodian and appends its
states to the screened store's status log; dft-report reads the tree and writes the DFT report.
A candidate keeps its generated id throughout: directory names are that id made safe.
"""

from __future__ import annotations

from typing import Any

from matra_hpc.context import RunContext
from matra_hpc.dft.config import DftReportConfig, VaspPrepConfig
from matra_hpc.dft.prep import prepare_tree
from matra_hpc.dft.report import build_report


def run_vasp_prep(config: VaspPrepConfig, ctx: RunContext) -> dict[str, Any]:
    """Write this rank's share of the VASP tree (every rank when run under MPI); resumable."""
    return prepare_tree(config, ctx)


def run_dft_report(config: DftReportConfig, ctx: RunContext) -> dict[str, Any]:
    """Collect the tree's VASP results into the report (one process; ``workers`` parse in parallel)."""
    if not ctx.is_main:
        return {}
    return build_report(config)
