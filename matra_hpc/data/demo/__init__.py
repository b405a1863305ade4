"""The demo data set that ships with matra-hpc (see ATTRIBUTION.md)."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from pymatgen.core import Lattice, Structure

FLLA_FILE = "flla_2015.jsonl.gz"
FLLA_ROWS = 3938


def flla_path() -> Path:
    """Path of the vendored flla_2015 file inside the installed package."""
    return Path(str(resources.files(__package__).joinpath(FLLA_FILE)))


@dataclass
class DemoRecord:
    material_id: str
    structure: Structure
    properties: dict[str, float] = field(default_factory=dict)


def structure_from_record(rec: dict) -> Structure:
    """Build a pymatgen Structure from one vendored JSON line (disorder kept as is)."""
    species = []
    for sp in rec["species"]:
        species.append(sp if isinstance(sp, str) else {el: occ for el, occ in sp})
    return Structure(Lattice(rec["lattice"]), species, rec["frac_coords"])


def iter_flla(limit: int | None = None) -> Iterator[DemoRecord]:
    """Stream the 3,938 Materials Project structures of flla_2015 with their energies."""
    with gzip.open(flla_path(), "rt") as handle:
        for i, line in enumerate(handle):
            if limit is not None and i >= limit:
                return
            rec = json.loads(line)
            yield DemoRecord(
                material_id=rec["material_id"],
                structure=structure_from_record(rec),
                properties={
                    "e_above_hull": rec["e_above_hull"],
                    "e_form": rec["formation_energy_per_atom"],
                },
            )
