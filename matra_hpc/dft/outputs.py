"""Reading a candidate's VASP outputs: which runs exist, did they converge, and why not.

One judgement shared by the job (its final ``converged``/``failed`` event) and ``dft-report``, so
the two never disagree. Runs are named by custodian's suffixes: ``relax1``, ``relax2``
(double relaxation) and ``static``, each ``vasprun.xml.<run>`` plain or gzipped.
"""

from __future__ import annotations

import gzip
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RUNS = ("relax1", "relax2", "static")


def find_output(directory: str | Path, name: str, run: str) -> Path | None:
    """``<name>.<run>`` in ``directory``, plain or gzipped; None when absent."""
    directory = Path(directory)
    for candidate in (f"{name}.{run}", f"{name}.{run}.gz", f"{name}.{run}.GZ"):
        path = directory / candidate
        if path.is_file():
            return path
    return None


def load_vasprun(path: Path) -> Any:
    """pymatgen's Vasprun of a (gzipped) file; raises ValueError on a truncated or corrupt file."""
    from pymatgen.io.vasp.outputs import Vasprun

    if path.stat().st_size == 0:
        raise ValueError(f"{path.name} is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Vasprun(str(path), parse_dos=False, parse_eigen=False, parse_projected_eigen=False,
                           parse_potcar_file=False, exception_on_bad_xml=True)
    except (gzip.BadGzipFile, EOFError) as exc:
        raise ValueError(f"{path.name} is not a readable gzip file ({exc})") from None
    except Exception as exc:  # ParseError, IndexError, KeyError ...: pymatgen's view of a broken file
        raise ValueError(f"{path.name} is truncated or corrupt ({type(exc).__name__}: {exc})") from None


@dataclass
class Assessment:
    """What a candidate directory's outputs say."""

    state: str  # "converged", "failed" or "missing" (never ran)
    reason: str = ""
    message: str = ""
    final: Path | None = None  # the vasprun.xml whose energy counts
    vasprun: Any = None  # its parsed Vasprun when state == converged
    runs: dict[str, str] = field(default_factory=dict)  # run -> file name found


def assess(directory: str | Path, *, static: bool = True, keep_vasprun: bool = False) -> Assessment:
    """Judge a candidate directory after custodian: converged, or failed with a reason."""
    directory = Path(directory)
    runs = {run: p.name for run in RUNS if (p := find_output(directory, "vasprun.xml", run))}
    if not runs:
        plain = [p for p in (directory / "vasprun.xml", directory / "vasprun.xml.gz") if p.is_file()]
        if not plain:
            return Assessment("missing", "validation_failed", "no vasprun.xml: VASP never finished a run here")
        # a run custodian stopped before renaming (a killed job): judge that file
        runs["current"] = plain[0].name
    order = [r for r in ("static", "relax2", "relax1", "current") if r in runs]
    final_run = order[0]
    wanted = "static" if static else "relax2"
    path = directory / runs[final_run]
    try:
        vrun = load_vasprun(path)
    except ValueError as exc:
        return Assessment("failed", "validation_failed", str(exc), final=path, runs=runs)
    if not vrun.converged_electronic:
        return Assessment("failed", "unconverged_electronic",
                          f"{path.name}: the last SCF did not reach EDIFF", final=path, runs=runs)
    if final_run != "static" and not vrun.converged_ionic:
        return Assessment("failed", "unconverged_ionic",
                          f"{path.name}: NSW reached before forces fell below EDIFFG", final=path, runs=runs)
    if final_run != wanted:
        return Assessment("failed", "validation_failed",
                          f"the {wanted} run is missing (last run found: {final_run})", final=path, runs=runs)
    relax = "relax2" if "relax2" in runs else None
    if relax:
        if final_run == relax:
            relax_run = vrun
        else:
            try:
                relax_run = load_vasprun(directory / runs[relax])
            except ValueError as exc:
                return Assessment("failed", "validation_failed", str(exc), final=path, runs=runs)
        if not relax_run.converged_ionic:
            return Assessment("failed", "unconverged_ionic",
                              f"{runs[relax]}: NSW reached before forces fell below EDIFFG", final=path, runs=runs)
        if not relax_run.converged_electronic:
            return Assessment("failed", "unconverged_electronic",
                              f"{runs[relax]}: an SCF cycle did not reach EDIFF", final=path, runs=runs)
    return Assessment("converged", final=path, vasprun=vrun if keep_vasprun else None, runs=runs)
