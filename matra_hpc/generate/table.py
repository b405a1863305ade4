"""The columns of generated rows, as numpy arrays, and their Zarr round trip.

One ``GeneratedTable`` is a shard (or a temperature's consolidated view): ragged tokens/values
with ``offsets``, ragged structures with ``site_offsets``, per-row flags and text. Layout of the
generated store (docs/contracts.md section G) in ``matra_hpc/generate/store.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from matra_hpc.shards import STRUCTURE_COLUMNS, concat_columns, read_columns, write_columns

# column -> (dtype, kind); "row": one per row, "flat": ragged payload, "offsets": rows + 1
COLUMNS: dict[str, tuple[object, str]] = {
    "id": (str, "row"),
    "tokens": (np.int32, "flat"),
    "values": (np.float64, "flat"),
    "offsets": (np.int64, "offsets"),
    "complete": (np.bool_, "row"),
    "decodes": (np.bool_, "row"),
    "bonds_ok": (np.bool_, "row"),
    "spacegroup_ok": (np.bool_, "row"),
    "dup_train": (np.bool_, "row"),
    "sampled_spacegroup": (np.int16, "row"),
    "found_spacegroup": (np.int16, "row"),
    "prototype_hash": (str, "row"),
    "formula": (str, "row"),
    "cif": (str, "row"),
    "error": (str, "row"),
    **STRUCTURE_COLUMNS,
    "n_sites_conventional": (np.int32, "row"),
    "n_sites_primitive": (np.int32, "row"),
}
VIEW_ONLY_COLUMNS = {"dup_run": (np.bool_, "row")}

@dataclass
class GeneratedTable:
    id: np.ndarray
    tokens: np.ndarray
    values: np.ndarray
    offsets: np.ndarray
    complete: np.ndarray
    decodes: np.ndarray
    bonds_ok: np.ndarray
    spacegroup_ok: np.ndarray
    dup_train: np.ndarray
    sampled_spacegroup: np.ndarray
    found_spacegroup: np.ndarray
    prototype_hash: np.ndarray
    formula: np.ndarray
    cif: np.ndarray
    error: np.ndarray
    lattice: np.ndarray
    frac_coords: np.ndarray
    numbers: np.ndarray
    site_offsets: np.ndarray
    n_sites_conventional: np.ndarray
    n_sites_primitive: np.ndarray
    dup_run: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.id)

    def row_tokens(self, r: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.offsets[r], self.offsets[r + 1]
        return self.tokens[a:b], self.values[a:b]

    def row_structure(self, r: int):
        """The decoded structure of row r as a pymatgen Structure (None if it did not decode)."""
        if not self.decodes[r]:
            return None
        from pymatgen.core import Lattice, Structure

        a, b = self.site_offsets[r], self.site_offsets[r + 1]
        return Structure(Lattice(self.lattice[r]), self.numbers[a:b].astype(int), self.frac_coords[a:b])

    def write(self, group) -> None:
        """Write every column as an array of the (new, empty) Zarr group."""
        columns = {**COLUMNS, **(VIEW_ONLY_COLUMNS if self.dup_run is not None else {})}
        write_columns(group, {name: getattr(self, name) for name in columns}, columns)

    @classmethod
    def read(cls, group) -> GeneratedTable:
        columns = {**COLUMNS, **(VIEW_ONLY_COLUMNS if "dup_run" in group else {})}
        return cls(**read_columns(group, columns))

    @classmethod
    def concat(cls, tables: list[GeneratedTable]) -> GeneratedTable:
        if not tables:
            return empty_table()
        return cls(**concat_columns([{n: getattr(t, n) for n in COLUMNS} for t in tables], COLUMNS))


def empty_table() -> GeneratedTable:
    data = {}
    for name, (dtype, kind) in COLUMNS.items():
        if kind == "offsets":
            data[name] = np.zeros(1, dtype=dtype)
        elif name == "lattice":
            data[name] = np.zeros((0, 3, 3))
        elif name == "frac_coords":
            data[name] = np.zeros((0, 3))
        else:
            data[name] = np.zeros(0, dtype=object if dtype is str else dtype)
    return GeneratedTable(**data)


class TableBuilder:
    """Accumulates rows, then freezes them into a ``GeneratedTable``."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def add(self, row_id: str, tokens, values, check, dup_train: bool) -> None:
        from matra_hpc.generate.checks import nan_lattice, structure_arrays

        if check.structure is not None:
            lattice, frac, numbers = structure_arrays(check.structure)
        else:
            lattice, frac, numbers = nan_lattice(), np.zeros((0, 3)), np.zeros(0, dtype=np.int16)
        self.rows.append(dict(
            id=row_id, tokens=np.asarray(tokens, dtype=np.int32), values=np.asarray(values, dtype=np.float64),
            complete=check.complete, decodes=check.decodes, bonds_ok=check.bonds_ok,
            spacegroup_ok=check.spacegroup_ok, dup_train=dup_train,
            sampled_spacegroup=check.sampled_spacegroup, found_spacegroup=check.found_spacegroup,
            prototype_hash=check.prototype_hash, formula=check.formula, cif=check.cif, error=check.error,
            lattice=lattice, frac_coords=frac, numbers=numbers,
            n_sites_conventional=len(numbers), n_sites_primitive=check.n_sites_primitive,
        ))

    def build(self) -> GeneratedTable:
        if not self.rows:
            return empty_table()
        data: dict[str, np.ndarray] = {}
        for name, (dtype, kind) in COLUMNS.items():
            if kind == "offsets":
                continue
            items = [r[name] for r in self.rows]
            if kind == "flat":
                data[name] = np.concatenate(items).astype(dtype)
                if name == "frac_coords":
                    data[name] = data[name].reshape(-1, 3)
            elif dtype is str:
                data[name] = np.asarray(items, dtype=object)
            elif name == "lattice":
                data[name] = np.stack(items).astype(np.float64)
            else:
                data[name] = np.asarray(items, dtype=dtype)
        data["offsets"] = np.concatenate([[0], np.cumsum([len(r["tokens"]) for r in self.rows])]).astype(np.int64)
        data["site_offsets"] = np.concatenate(
            [[0], np.cumsum([len(r["numbers"]) for r in self.rows])]
        ).astype(np.int64)
        return GeneratedTable(**data)
