"""Builders of small fixed stores with known answers, for the evaluation tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pymatgen.core import Lattice, Structure

from matra_hpc.generate import store as gstore
from matra_hpc.generate.checks import StructureCheck
from matra_hpc.generate.table import TableBuilder

FCC = [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]


def _fcc(a: float, basis: list[tuple[str, list[float]]]) -> Structure:
    """A cubic F cell with the given basis (site lists written out: from_spacegroup is slow)."""
    species, coords = [], []
    for element, offset in basis:
        for t in FCC:
            species.append(element)
            coords.append([(t[i] + offset[i]) % 1.0 for i in range(3)])
    return Structure(Lattice.cubic(a), species, coords)


def heusler(c_over_a: float = 1.0) -> Structure:
    """AlCaCu2 in the full-Heusler arrangement (Fm-3m; tetragonal I4/mmm when c/a != 1)."""
    cubic = _fcc(6.1, [("Al", [0, 0, 0]), ("Ca", [0.5, 0.5, 0.5]), ("Cu", [0.25, 0.25, 0.25]),
                       ("Cu", [0.75, 0.75, 0.75])])
    cubic.apply_strain([0, 0, c_over_a - 1])
    return cubic


def rock_salt(a: float = 5.6) -> Structure:
    return _fcc(a, [("Na", [0, 0, 0]), ("Cl", [0.5, 0.5, 0.5])])


def cscl_alcu() -> Structure:
    return Structure(Lattice.cubic(2.95), ["Al", "Cu"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def disguised(structure: Structure, seed: int = 0) -> Structure:
    """Another origin, a 2x1x1 supercell, shuffled sites, a 2% larger cell: the same crystal."""
    s = structure.copy()
    s.translate_sites(list(range(len(s))), [0.13, 0.29, 0.41], frac_coords=True, to_unit_cell=True)
    s.make_supercell([2, 1, 1])
    order = np.random.default_rng(seed).permutation(len(s))
    s = Structure(s.lattice, [s[i].species for i in order], [s[i].frac_coords for i in order])
    s.scale_lattice(s.volume * 1.02)
    return s


def _check(structure: Structure | None) -> StructureCheck:
    ok = structure is not None
    return StructureCheck(
        complete=True, decodes=ok, bonds_ok=ok, spacegroup_ok=ok, sampled_spacegroup=225 if ok else 0,
        found_spacegroup=225 if ok else 0, prototype_hash=f"h-{structure.composition.reduced_formula}" if ok else "",
        error="" if ok else "DecodeError: test row", structure=structure,
        formula=structure.composition.reduced_formula if ok else "", cif="", n_sites_primitive=len(structure) if ok else 0,
    )


def write_generated(path: Path, rows: dict[float, list[Structure | None]], run_id: str = "t") -> Path:
    """A generated store, one shard per temperature, rows in the given order (None: did not decode)."""
    temps = sorted(rows)
    per_temp = max(len(v) for v in rows.values())
    gstore.init_store(path, {"schema": gstore.SCHEMA, "run_id": run_id, "checkpoint": None, "train_store": None},
                      {"temperatures": temps, "shards": 1, "per_temp": per_temp, "condition": None})
    for t in temps:
        builder = TableBuilder()
        for i, structure in enumerate(rows[t]):
            builder.add(f"{run_id}:T{t:.2f}:s0:{i}", [1, 2, 3], [np.nan] * 3, _check(structure), dup_train=False)
        gstore.write_shard(path, t, 0, builder.build(), {"seconds": 0.0})
    gstore.consolidate(path)
    return path


class _AllUnique:
    """Uniqueness that treats every relaxed row as new (the tests set what they count)."""

    def first_seen(self, candidate_id: str, structure) -> None:
        return None


def write_screened(path: Path, rows: dict[float, list[tuple[str, str, float]]], run_id: str = "s") -> Path:
    """A screened store: per temperature, rows of (status, reason, e_hull); relaxed rows are NaCl.

    ``screened`` and ``rejected`` rows count as relaxed; ``screened`` ones are connected and novel.
    """
    from matra_hpc.screen import store as sstore

    temps = sorted(rows)
    sstore.init_store(path, {"schema": sstore.SCHEMA, "run_id": run_id, "shards": 1, "temperatures": temps},
                      {"test": run_id}, temps)
    for t in temps:
        builder = sstore.RowBuilder()
        for i, (status, reason, e_hull) in enumerate(rows[t]):
            relaxed = status in ("screened", "rejected")
            builder.add(id=f"{run_id}:T{t:.2f}:s0:{i}", status=status, reason=reason,
                        structure=rock_salt(5.6 + 0.01 * i) if relaxed else None, relaxed=relaxed,
                        e_hull=e_hull, connected=status == "screened", novel=status == "screened",
                        n_components=1 if status == "screened" else 2, potential="test")
        sstore.write_shard(path, t, 0, builder.build(), {"seconds": 0.0})
    sstore.consolidate(path, uniqueness=_AllUnique())
    return path
