"""Reference crystal sets bundled with installed dependencies, for the round-trip tests.

- ``iter_aflow_prototypes``: pymatgen's 288 AFLOW prototype structures
  (pymatgen/analysis/prototypes/aflow_prototypes.json.gz).
- ``iter_minerals``: robocrys's mineral database (robocrys/condense/mineral_db.json.gz).
The demo set (flla_2015) is ``matra_hpc.data.demo.iter_flla``.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path

from pymatgen.core import Structure

__all__ = ["iter_aflow_prototypes", "iter_minerals", "aflow_prototypes_path", "mineral_db_path"]


def _package_file(package: str, name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"{package} is not installed")
    return Path(spec.origin).parent / name


def aflow_prototypes_path() -> Path:
    return _package_file("pymatgen.analysis.prototypes", "aflow_prototypes.json.gz")


def mineral_db_path() -> Path:
    return _package_file("robocrys.condense", "mineral_db.json.gz")


def iter_aflow_prototypes() -> Iterator[tuple[str, Structure]]:
    """(AFLOW prototype label, structure) for each bundled prototype."""
    with gzip.open(aflow_prototypes_path(), "rt") as handle:
        entries = json.load(handle)
    for entry in entries:
        yield entry["tags"]["aflow"], Structure.from_dict(entry["snl"])


def iter_minerals() -> Iterator[tuple[str, Structure]]:
    """(mineral name, structure) for each entry of robocrys's mineral database."""
    with gzip.open(mineral_db_path(), "rt") as handle:
        table = json.load(handle)
    columns = table["columns"]
    for row in table["data"]:
        record = dict(zip(columns, row, strict=True))
        yield str(record["mineral"]), Structure.from_dict(record["structure"])
