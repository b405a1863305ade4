"""The DFT stage's configuration: one dataclass per command, defaults here, validated before work.

``VaspPrepConfig`` decides which candidates go to VASP and with which inputs, ``VaspRunConfig``
how each candidate runs under custodian, ``DftReportConfig`` how the results become a report.
Each is JSON-able (``asdict``) and recorded where it acts: the prep config in the VASP tree's
manifest, the run config in the job's task file, the report config in the report.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from matra_hpc.errors import UsageError

# The candidate filters vasp-prep knows; each is a boolean column of the screened store
# (``status == screened`` already implies relaxed, connected and a known e-hull).
FILTERS = ("relaxed", "connected", "novel", "unique")
TIE_BREAKS = ("id", "n_sites", "energy_per_atom")

# The paper's settings on top of pymatgen's MPRelaxSet (section IV.5): what differs from MP's.
PAPER_INCAR = {"EDIFFG": -0.005, "LCHARG": False}
PAPER_KPOINTS_PER_ATOM = 1000


@dataclass
class VaspPrepConfig:
    """``matra-hpc vasp-prep``: screened store -> one MPRelaxSet directory per candidate."""

    store: str
    out: str
    top: int = 150_000
    filters: tuple[str, ...] = FILTERS
    """Boolean columns a candidate must have true; status must be ``screened`` whatever this says."""
    per_temperature: dict[str, int] = field(default_factory=dict)
    """Cap per temperature group (``{"T0.70": 5000}``); groups not named are uncapped."""
    tie_break: str = "id"
    """Order among equal e_hull: ``id``, ``n_sites`` (smaller cells first) or ``energy_per_atom``."""
    kpoints_per_atom: int = PAPER_KPOINTS_PER_ATOM
    """Gamma-centred grid density in k-points per reciprocal atom (MP's relax set uses 64 per A^-3)."""
    ediffg: float = PAPER_INCAR["EDIFFG"]
    nsw: int = 200
    """Ionic steps per relaxation: MP's 99 is often too few for forces below 0.005 eV/A."""
    ncore: int | None = None
    """From the cluster profile (``vasp.ncore``); None leaves VASP's default."""
    kpar: int | None = None
    user_incar_settings: dict[str, Any] = field(default_factory=dict)
    """Further INCAR overrides (pymatgen's ``user_incar_settings``), recorded in the manifest."""
    potcar_dir: str | None = None
    """A POTCAR library (pymatgen's ``PMG_VASP_PSP_DIR`` layout); None: POTCAR.spec only."""
    workers: int = 1
    """Processes writing directories (on each MPI rank)."""
    block_size: int = 1000
    """Candidate directories per block folder (file systems slow down past ~1,000 entries)."""

    def validate(self) -> None:
        if self.top < 1:
            raise UsageError(f"--top must be >= 1, got {self.top}")
        unknown = sorted(set(self.filters) - set(FILTERS))
        if unknown:
            raise UsageError(f"unknown filter(s) {', '.join(unknown)}; valid: {', '.join(FILTERS)}")
        if self.tie_break not in TIE_BREAKS:
            raise UsageError(f"unknown tie-break {self.tie_break!r}; valid: {', '.join(TIE_BREAKS)}")
        for name, cap in self.per_temperature.items():
            if not (isinstance(name, str) and name.startswith("T")):
                raise UsageError(f"per-temperature quota key must look like T0.70, got {name!r}")
            if not isinstance(cap, int) or cap < 0:
                raise UsageError(f"per-temperature quota for {name} must be an integer >= 0, got {cap!r}")
        if self.kpoints_per_atom < 1:
            raise UsageError(f"k-points per atom must be >= 1, got {self.kpoints_per_atom}")
        if not (math.isfinite(self.ediffg) and self.ediffg < 0):
            raise UsageError(f"EDIFFG must be negative (a force criterion), got {self.ediffg}")
        if self.nsw < 1:
            raise UsageError(f"NSW must be >= 1, got {self.nsw}")
        for name in ("ncore", "kpar"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise UsageError(f"vasp.{name} must be an integer >= 1, got {value!r}")
        if self.workers < 1:
            raise UsageError(f"--workers must be >= 1, got {self.workers}")
        if self.block_size < 1:
            raise UsageError(f"block size must be >= 1, got {self.block_size}")

    def incar_settings(self) -> dict[str, Any]:
        """The INCAR keys set on top of MPRelaxSet (paper settings, profile, user)."""
        settings: dict[str, Any] = {"EDIFFG": self.ediffg, "LCHARG": PAPER_INCAR["LCHARG"], "NSW": self.nsw}
        if self.ncore is not None:
            settings["NCORE"] = self.ncore
        if self.kpar is not None:
            settings["KPAR"] = self.kpar
        settings.update(self.user_incar_settings)
        return settings

    def fingerprint(self) -> dict[str, Any]:
        """What decides the tree's contents: a rerun with another fingerprint is refused."""
        data = asdict(self)
        for key in ("out", "workers", "potcar_dir"):
            data.pop(key)
        data["filters"] = list(self.filters)
        return data


@dataclass
class VaspRunConfig:
    """How the job runs each candidate: custodian with MP's double relaxation, then a static run."""

    vasp_command: str
    """The profile's ``vasp.command``, e.g. ``srun --mpi=pmix vasp_std``."""
    gamma_command: str | None = None
    """VASP built for Gamma-only grids (custodian's ``gamma_vasp_cmd``); None: not used."""
    potcar_dir: str | None = None
    """Where the job builds POTCAR from POTCAR.spec (profile ``vasp.potcar_dir``); None: leave it."""
    max_errors: int = 5
    """Corrections custodian may apply per candidate before it gives up (atomate's default)."""
    polling_s: float = 10.0
    """How often custodian polls VASP (its own default; tests use less)."""
    monitor_freq: int = 30
    static: bool = True
    """Run the static total-energy calculation after the double relaxation (the paper's 'total energy')."""
    gzip_output: bool = True

    def validate(self) -> None:
        if not self.vasp_command or not str(self.vasp_command).strip():
            raise UsageError("no VASP command: set vasp.command in the cluster profile")
        if self.max_errors < 1:
            raise UsageError(f"max_errors must be >= 1, got {self.max_errors}")
        if not self.polling_s > 0:
            raise UsageError(f"polling_s must be > 0, got {self.polling_s}")
        if self.monitor_freq < 1:
            raise UsageError(f"monitor_freq must be >= 1, got {self.monitor_freq}")


@dataclass
class DftReportConfig:
    """``matra-hpc dft-report``: VASP outputs -> e-hull report against reference entries."""

    tree: str
    hull_reference: str | None = None
    """JSON of ComputedStructureEntry (MP or Alexandria, optionally gzipped); None: no e-hull."""
    reference_correction: str = "auto"
    """``auto``: MP2020 once (entries already carrying it as they are, others corrected here);
    ``none``: energies as given (a file already MP2020-compatible whose entries lack the run
    parameters the scheme needs, e.g. some Alexandria exports)."""
    thresholds: tuple[float, ...] = (0.001, 0.050, 0.100)
    static: bool = True
    """The energy comes from the static run (False: from the second relaxation, for ``--no-static`` runs)."""
    stable_threshold: float = 0.001
    """Candidates at or below this e-hull (eV/atom) go into the CIF bundle and the extxyz."""
    workers: int = 1

    def validate(self) -> None:
        if self.reference_correction not in ("auto", "none"):
            raise UsageError(f"reference correction must be auto or none, got {self.reference_correction!r}")
        if any(not (math.isfinite(t) and t >= 0) for t in self.thresholds):
            raise UsageError(f"thresholds must be >= 0: {self.thresholds}")
        if not math.isfinite(self.stable_threshold):
            raise UsageError("stable threshold must be finite")
        if self.workers < 1:
            raise UsageError(f"--workers must be >= 1, got {self.workers}")
