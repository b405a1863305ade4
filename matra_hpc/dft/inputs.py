"""VASP inputs: pymatgen's MPRelaxSet with the paper's settings.

MP's relaxation set gives PBE, PAW (MP's POTCAR choices), ENCUT 520 eV and Hubbard U for oxides
and fluorides of the transition metals MP treats with +U. The paper changes three things
(section IV.5), and this module adds what a 150,000-calculation campaign needs:

- k-points: Gamma-centred grids at 1,000 k-points per reciprocal atom (``grid_density``), where
  MP's relax set uses 64 k-points per A^-3 and Monkhorst-Pack grids for most cells;
- EDIFFG -0.005 (forces below 0.005 eV/A) instead of MP's energy criterion, with NSW raised
  (default 200) because such a tight criterion needs more ionic steps than MP's 99;
- LCHARG False: 150,000 charge densities would fill a file system (MP writes them);
- NCORE / KPAR from the cluster profile (parallelisation only: results unchanged).

POTCARs come from a POTCAR library when one is given (pymatgen's ``PMG_VASP_PSP_DIR`` layout);
otherwise only ``POTCAR.spec`` (the symbols) is written and the job builds the POTCAR on the
cluster (:func:`build_potcar`).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from matra_hpc.errors import MatraError

POTCAR_FUNCTIONAL = "PBE"  # MP's legacy PBE (VASP 5.2) set, the paper's "PAW parameters of VASP 5.2"


class PotcarError(MatraError):
    """No POTCAR could be built for a candidate (no library, or a symbol missing from it)."""


def relax_set(structure: Any, *, kpoints_per_atom: int = 1000, incar: dict[str, Any] | None = None):
    """The MPRelaxSet of ``structure`` with the paper's k-points and the given INCAR overrides."""
    from pymatgen.io.vasp.sets import MPRelaxSet

    return MPRelaxSet(
        structure,
        user_incar_settings=dict(incar or {}),
        user_kpoints_settings={"grid_density": int(kpoints_per_atom)},
        force_gamma=True,
    )


def write_inputs(structure: Any, directory: str | Path, *, kpoints_per_atom: int = 1000,
                 incar: dict[str, Any] | None = None, potcar_dir: str | None = None) -> list[str]:
    """Write INCAR, KPOINTS, POSCAR and POTCAR (library given) or POTCAR.spec; returns the symbols."""
    vis = relax_set(structure, kpoints_per_atom=kpoints_per_atom, incar=incar)
    with warnings.catch_warnings():
        # "Co without an oxidation state is initialized as low spin": MP's own default, as MP runs it
        warnings.simplefilter("ignore", UserWarning)
        if potcar_dir:
            with _psp_dir(potcar_dir):
                vis.write_input(str(directory), potcar_spec=False)
        else:
            vis.write_input(str(directory), potcar_spec=True)
    return list(vis.potcar_symbols)


class _psp_dir:
    """Point pymatgen at a POTCAR library for one call (it reads SETTINGS, not the environment)."""

    def __init__(self, path: str) -> None:
        self.path = str(path)

    def __enter__(self) -> None:
        from pymatgen.core import SETTINGS

        self.old = SETTINGS.get("PMG_VASP_PSP_DIR")
        SETTINGS["PMG_VASP_PSP_DIR"] = self.path

    def __exit__(self, *exc: object) -> None:
        from pymatgen.core import SETTINGS

        if self.old is None:
            SETTINGS.pop("PMG_VASP_PSP_DIR", None)
        else:
            SETTINGS["PMG_VASP_PSP_DIR"] = self.old


def default_potcar_dir() -> str | None:
    """``PMG_VASP_PSP_DIR`` from the environment or pymatgen's settings file, if set."""
    from pymatgen.core import SETTINGS

    return os.environ.get("PMG_VASP_PSP_DIR") or SETTINGS.get("PMG_VASP_PSP_DIR") or None


def build_potcar(directory: str | Path, potcar_dir: str) -> Path:
    """POTCAR from the directory's POTCAR.spec and a POTCAR library (what the job does on the cluster)."""
    from pymatgen.io.vasp.inputs import Potcar

    directory = Path(directory)
    spec = directory / "POTCAR.spec"
    if not spec.is_file():
        raise PotcarError(f"{directory} has neither POTCAR nor POTCAR.spec")
    symbols = [line.strip() for line in spec.read_text().splitlines() if line.strip()]
    try:
        with _psp_dir(potcar_dir), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            potcar = Potcar(symbols, functional=POTCAR_FUNCTIONAL)
    except (OSError, RuntimeError, ValueError) as exc:
        raise PotcarError(f"cannot build POTCAR {symbols} from {potcar_dir}: {exc}") from None
    out = directory / "POTCAR"
    tmp = directory / ".POTCAR.partial"
    potcar.write_file(str(tmp))
    os.replace(tmp, out)
    return out
