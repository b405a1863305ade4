"""The columns of generated rows, as numpy arrays, and their Zarr round trip.

One ``GeneratedTable`` is a shard (or a temperature's consolidated view): ragged tokens/values
with ``offsets``, ragged structures with ``site_offsets``, per-row flags and text. Layout of the
generated store (docs/contracts.md section G) in ``matra_hpc/generate/store.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

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
    "lattice": (np.float64, "row"),
    "frac_coords": (np.float64, "flat"),
    "numbers": (np.int16, "flat"),
    "site_offsets": (np.int64, "offsets"),
    "n_sites_conventional": (np.int32, "row"),
    "n_sites_primitive": (np.int32, "row"),
}
VIEW_ONLY_COLUMNS = {"dup_run": (np.bool_, "row")}

# Flat arrays are chunked so that no chunk of a large shard grows past a few MB.
FLAT_CHUNK = 1 << 20


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
        columns = dict(COLUMNS)
        if self.dup_run is not None:
            columns.update(VIEW_ONLY_COLUMNS)
        for name, (dtype, kind) in columns.items():
            data = getattr(self, name)
            if dtype is str:
                data = np.asarray(data, dtype=object)
                chunks = (max(1, min(len(data), 65536)),)
                arr = group.create_array(name, shape=data.shape, dtype=str, chunks=chunks, overwrite=True)
            else:
                data = np.ascontiguousarray(data, dtype=dtype)
                lead = FLAT_CHUNK if kind == "flat" else 1 << 18
                chunks = (max(1, min(data.shape[0], lead)),) + data.shape[1:]
                arr = group.create_array(name, shape=data.shape, dtype=dtype, chunks=chunks, overwrite=True)
            if data.size:
                arr[...] = data

    @classmethod
    def read(cls, group) -> GeneratedTable:
        names = list(COLUMNS) + (["dup_run"] if "dup_run" in group else [])
        data = {}
        for name in names:
            dtype = {**COLUMNS, **VIEW_ONLY_COLUMNS}[name][0]
            arr = group[name]
            values = arr[...] if arr.size else np.zeros(arr.shape, dtype=object if dtype is str else dtype)
            data[name] = np.asarray(values, dtype=object) if dtype is str else np.asarray(values)
        return cls(**data)

    @classmethod
    def concat(cls, tables: list[GeneratedTable]) -> GeneratedTable:
        if not tables:
            return empty_table()
        out = {}
        for f in fields(cls):
            name = f.name
            if name == "dup_run":
                continue
            kind = COLUMNS[name][1]
            parts = [getattr(t, name) for t in tables]
            if kind == "offsets":
                shifted = [parts[0]]
                base = parts[0][-1]
                for p in parts[1:]:
                    shifted.append(p[1:] + base)
                    base = base + p[-1]
                out[name] = np.concatenate(shifted).astype(np.int64)
            else:
                out[name] = np.concatenate(parts)
        return cls(**out)


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
