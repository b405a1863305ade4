"""Reading structures for the ``tokens`` commands: files, folders and CSV columns.

Files: CIF (``.cif``), POSCAR/CONTCAR (``POSCAR*``, ``CONTCAR*``, ``.vasp``, ``.poscar``),
extended XYZ (``.xyz``, ``.extxyz``; every frame), pymatgen Structure JSON (``.json``).
Folders are walked recursively for those. A CSV (``.csv``; a leading ``#`` comment line is
allowed) gives one structure per row from ``csv_column``: CIF text, or a pymatgen Structure
dict as JSON or as a Python literal (flla_2015 writes Python reprs). An entry that cannot be
read yields a ``ParseFailure`` in its place, so a caller counts it as ``parse_error`` and goes on.
"""

from __future__ import annotations

import ast
import csv
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from matra_hpc.errors import UsageError

__all__ = ["ParseFailure", "cif_blocks", "iter_structures", "read_cif_block", "structure_from_text",
           "structure_problem"]

_CIF = {".cif"}
_POSCAR_SUFFIX = {".vasp", ".poscar"}
_XYZ = {".xyz", ".extxyz"}
_JSON = {".json"}
_CSV = {".csv"}


@dataclass
class ParseFailure:
    detail: str


def _kind(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in _CIF:
        return "cif"
    if suffix in _POSCAR_SUFFIX or path.name.upper().startswith(("POSCAR", "CONTCAR")):
        return "poscar"
    if suffix in _XYZ:
        return "xyz"
    if suffix in _JSON:
        return "json"
    if suffix in _CSV:
        return "csv"
    return None


def structure_from_text(text: str):
    """A Structure from CIF text or a Structure dict (JSON or Python literal)."""
    from pymatgen.core import Structure

    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError:
            data = ast.literal_eval(stripped)
        return Structure.from_dict(data)
    return Structure.from_str(stripped, fmt="cif")


def cif_blocks(text: str) -> list[str]:
    """The ``data_`` blocks of a CIF, each as its own CIF text (a file without one is one block)."""
    blocks: list[list[str]] = []
    for line in text.splitlines(keepends=True):
        if line.lstrip().lower().startswith("data_") or not blocks:
            blocks.append([])
        blocks[-1].append(line)
    return ["".join(b) for b in blocks if any(x.lstrip().lower().startswith("data_") for x in b)] or [text]


def read_cif_block(block: str) -> object:
    """The structure of one CIF block (``cif_blocks``), or a ParseFailure saying why not."""
    from pymatgen.io.cif import CifParser

    try:
        structures = CifParser.from_str(block).parse_structures(primitive=False)
    except Exception as exc:  # pymatgen raises ValueError and friends on malformed blocks
        return ParseFailure(f"{type(exc).__name__}: {exc}".splitlines()[0])
    return structures[0] if structures else ParseFailure("no structure in CIF block")


def structure_problem(structure: object) -> str | None:
    """The rejection reason of a structure a reader returned, or None: the checks every reader makes.

    ``not_periodic`` (a molecule, or a cell without volume), ``nan_or_inf`` (non-finite cell or
    coordinates), ``disordered`` (partial occupancies).
    """
    import numpy as np
    from pymatgen.core import Structure

    if not isinstance(structure, Structure):
        return "not_periodic"
    lattice = np.asarray(structure.lattice.matrix, dtype=float)
    coords = np.asarray(structure.frac_coords, dtype=float)
    if not (np.isfinite(lattice).all() and np.isfinite(coords).all()):
        return "nan_or_inf"
    if abs(np.linalg.det(lattice)) < 1e-9:
        return "not_periodic"
    if not structure.is_ordered:
        return "disordered"
    return None


def _read_file(path: Path, kind: str) -> Iterator[tuple[str, object]]:
    from pymatgen.core import Structure

    try:
        if kind == "cif":
            blocks = cif_blocks(path.read_text(errors="replace"))
            for i, block in enumerate(blocks):
                yield (f"{path}" if len(blocks) == 1 else f"{path}#{i}"), read_cif_block(block)
        elif kind == "poscar":
            yield str(path), Structure.from_file(str(path))
        elif kind == "xyz":
            from ase.io import read
            from pymatgen.io.ase import AseAtomsAdaptor

            frames = read(str(path), index=":", format="extxyz")
            for i, atoms in enumerate(frames):
                if not all(atoms.pbc):
                    yield f"{path}#{i}", AseAtomsAdaptor.get_molecule(atoms)  # rejected: not_periodic
                else:
                    yield f"{path}#{i}", AseAtomsAdaptor.get_structure(atoms)
        elif kind == "json":
            yield str(path), structure_from_text(path.read_text())
    except Exception as exc:  # unreadable file: one parse failure, keep going
        yield str(path), ParseFailure(f"{type(exc).__name__}: {exc}".splitlines()[0])


def _read_csv(path: Path, column: str | None) -> Iterator[tuple[str, object]]:
    if column is None:
        raise UsageError(f"{path} is a CSV: name the column that holds structures with --csv-column")
    csv.field_size_limit(sys.maxsize)
    with open(path, newline="") as handle:
        lines = (line for line in handle if not line.startswith("#"))
        reader = csv.DictReader(lines)
        if reader.fieldnames is None or column not in reader.fieldnames:
            raise UsageError(f"{path} has no column {column!r} (columns: {reader.fieldnames})")
        id_column = next((c for c in ("material_id", "id", "mpid") if c in reader.fieldnames), None)
        for i, row in enumerate(reader):
            name = f"{path}:{row[id_column] if id_column else i}"
            try:
                yield name, structure_from_text(row[column])
            except Exception as exc:
                yield name, ParseFailure(f"{type(exc).__name__}: {exc}".splitlines()[0])


def iter_structures(paths: list[str], csv_column: str | None = None) -> Iterator[tuple[str, object]]:
    """(name, Structure or ParseFailure) for every structure in the given files and folders."""
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise UsageError(f"no such file or folder: {raw}")
        if path.is_dir():
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                kind = _kind(child)
                if kind == "csv":
                    yield from _read_csv(child, csv_column)
                elif kind is not None:
                    yield from _read_file(child, kind)
            continue
        kind = _kind(path)
        if kind == "csv":
            yield from _read_csv(path, csv_column)
        elif kind is None:
            raise UsageError(
                f"unknown structure file type: {raw} (cif, POSCAR/.vasp, .xyz/.extxyz, .json, .csv)"
            )
        else:
            yield from _read_file(path, kind)
