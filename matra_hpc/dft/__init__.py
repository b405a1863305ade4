"""The DFT stage: screened candidates -> MP-compatible VASP inputs -> custodian job arrays -> e-hull report.

Public API (see docs/contracts.md section L and docs/architecture.md):

- ``VaspPrepConfig``, ``VaspRunConfig``, ``DftReportConfig``: the stage's settings and defaults;
- ``run_vasp_prep(config, ctx)``, ``run_dft_report(config, ctx)``: the stage entry points;
- ``safe_name(id)``, ``read_tree_manifest(tree)``, ``tree_states(manifest)``: the VASP tree and
  its per-candidate states.
"""

from matra_hpc.dft.config import DftReportConfig, VaspPrepConfig, VaspRunConfig
from matra_hpc.dft.layout import TREE_SCHEMA, TreeError, id_from_name, is_tree, read_tree_manifest, safe_name
from matra_hpc.dft.stage import run_dft_report, run_vasp_prep
from matra_hpc.dft.status import tree_states

__all__ = [
    "TREE_SCHEMA",
    "DftReportConfig",
    "TreeError",
    "VaspPrepConfig",
    "VaspRunConfig",
    "id_from_name",
    "is_tree",
    "read_tree_manifest",
    "run_dft_report",
    "run_vasp_prep",
    "safe_name",
    "tree_states",
]
