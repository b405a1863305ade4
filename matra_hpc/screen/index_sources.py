"""Sources of a novelty index: what each path holds, its work units, and reading one unit.

A source is a token store (``matra-hpc/tokens/1``), a generated store (``generated/1``: rows
that decoded), a screened store (``screened/1``: rows whose status is ``screened``), a
folder or file of structures (CIF, POSCAR/.vasp, extxyz/.xyz, pymatgen JSON), or a raw data set
named as ``data prepare`` names it (``alexandria=DIR``, ``mp=DIR``, ``wbm=DIR``, ``folder=DIR``,
``flla``), read with the data stage's readers and without its filters (no e-hull cut, no site
limit), so an index can hold a whole reference set such as Alexandria. A work unit is a
fixed slice of one source (rows of a store group, or files of a folder), a function of the
sources only, so any rank layout builds the same parts.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from matra_hpc.errors import StoreError, UsageError

STORE_ROWS_PER_UNIT = 1 << 16
FILES_PER_UNIT = 256
# A data set file is one stream (Alexandria: ~100k entries per file); its records are dealt to
# this many units, each reading the stream and decoding only its own records, so more ranks
# than files find work (encoding, ~10 ms a structure, dominates; reading the stream is cheap).
DATASET_SHARES = 8
_STRUCTURE_SUFFIXES = {".cif", ".vasp", ".poscar", ".xyz", ".extxyz", ".json"}

SCHEMA_TOKENS = "matra-hpc/tokens/1"
SCHEMA_GENERATED = "matra-hpc/generated/1"
SCHEMA_SCREENED = "matra-hpc/screened/1"


@dataclass
class Unit:
    name: str
    source: int
    group: str  # Zarr group inside a store ("" for the root); "" for files
    start: int
    stop: int
    share: int = 0  # data set files: this unit loads the records i with i % shares == share
    shares: int = 1


@dataclass
class Source:
    path: str
    kind: str  # tokens | generated | screened | files | dataset
    label: str
    groups: dict[str, int] = field(default_factory=dict)  # group -> rows (stores); "" -> files
    spec: dict[str, Any] | None = None  # dataset sources: the data stage's SourceSpec
    fingerprint: Any = None  # what changes when the source's content does (stores)


@dataclass
class Rows:
    """Entries read from one unit, before their keys are computed."""

    ids: list[str] = field(default_factory=list)
    lattices: list[np.ndarray] = field(default_factory=list)
    fracs: list[np.ndarray] = field(default_factory=list)
    numbers: list[np.ndarray] = field(default_factory=list)
    hashes: list[str | None] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def add(self, id: str, lattice: np.ndarray, frac: np.ndarray, numbers: np.ndarray, h: str | None) -> None:
        self.ids.append(id)
        self.lattices.append(np.asarray(lattice, dtype=np.float64).reshape(3, 3))
        self.fracs.append(np.asarray(frac, dtype=np.float64).reshape(-1, 3))
        self.numbers.append(np.asarray(numbers, dtype=np.int64))
        self.hashes.append(h)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def _schema(path: Path) -> str | None:
    meta = path / "zarr.json"
    if not meta.is_file():
        return None
    try:
        return json.loads(meta.read_text()).get("attributes", {}).get("schema")
    except (OSError, json.JSONDecodeError):
        return None


def _structure_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and (
        p.suffix.lower() in _STRUCTURE_SUFFIXES or p.name.upper().startswith(("POSCAR", "CONTCAR"))))


def describe_source(raw: str) -> Source:
    """What a source path holds and how many rows or files each of its groups has."""
    path = Path(raw)
    if not path.exists() and ("=" in raw or raw in ("flla", "demo")):
        from matra_hpc.data.readers import parse_source, read_units

        spec = parse_source(raw)
        spec = type(spec)(spec.kind, spec.name, tuple(str(Path(p).resolve()) for p in spec.paths),
                          str(Path(spec.summary).resolve()) if spec.summary else None)
        return Source(raw, "dataset", spec.name, {"": len(read_units(spec))}, spec.to_dict())
    if not path.exists():
        raise UsageError(f"index source {raw} does not exist")
    path = path.resolve()
    schema = _schema(path) if path.is_dir() else None
    if schema == SCHEMA_TOKENS:
        from matra_hpc.data.store import open_token_store

        root = open_token_store(path)
        return Source(str(path), "tokens", path.name, {"": int(root.attrs["n_rows"])},
                      fingerprint=root.attrs.get("content_hash"))
    if schema in (SCHEMA_GENERATED, SCHEMA_SCREENED):
        import zarr

        root = zarr.open_group(str(path), mode="r")
        from matra_hpc.generate.temperatures import temperature_group
        from matra_hpc.tokens.format import require_token_format

        if schema == SCHEMA_GENERATED:  # its prototype hashes are compared with this format's
            require_token_format(root.attrs.get("token_format"), f"generated store {path}",
                                 "generate again into a new --out before indexing it")

        groups, views = {}, {}
        for t in root.attrs.get("temperatures") or root.attrs.get("fingerprint", {}).get("temperatures", []):
            name = temperature_group(float(t))
            if name not in root or "view" not in root[name].attrs:
                raise StoreError(f"{path}/{name} has no consolidated view: finish that run (its consolidate step) "
                                 f"before indexing it")
            groups[name] = int(root[name]["id"].shape[0])
            views[name] = root[name].attrs["view"]
        return Source(str(path), "generated" if schema == SCHEMA_GENERATED else "screened", path.name, groups,
                      fingerprint={"run_id": root.attrs.get("run_id"), "views": views})
    if (path / "zarr.json").is_file():
        raise UsageError(f"{path} is a Zarr store with schema {schema!r}: an index reads token, generated or "
                         f"screened stores")
    files = _structure_files(path)
    if not files:
        raise UsageError(f"{path} holds no structure files (cif, POSCAR/.vasp, .xyz/.extxyz, .json)")
    return Source(str(path), "files", path.name, {"": len(files)})


def plan_units(sources: list[Source], rows_per_unit: int = STORE_ROWS_PER_UNIT,
               files_per_unit: int = FILES_PER_UNIT) -> list[Unit]:
    units = []
    for i, src in enumerate(sources):
        if src.kind == "dataset":
            for f in range(src.groups[""]):
                for share in range(DATASET_SHARES):
                    units.append(Unit(f"{i:03d}-dataset-{f:06d}-{share:02d}", i, "", f, f + 1, share,
                                      DATASET_SHARES))
            continue
        step = files_per_unit if src.kind == "files" else rows_per_unit
        for group, n in src.groups.items():
            for k, start in enumerate(range(0, n, step)):
                tag = group or src.kind
                units.append(Unit(f"{i:03d}-{tag}-{k:06d}", i, group, start, min(n, start + step)))
    return units


def plan_json(sources: list[Source], units: list[Unit]) -> dict[str, Any]:
    return {"sources": [asdict(s) for s in sources], "units": [asdict(u) for u in units]}


# --------------------------------------------------------------------------------------------
# Hashing structures


def structure_hash(structure: Any) -> str | None:
    """The current prototype hash of a structure (encode, then the library hash); None if it
    does not encode (P1, too many sites, ...): such entries are found by formula only."""
    from matra_hpc.tokens import EncodeError, encode, prototype_hash

    try:
        return prototype_hash(encode(structure))
    except EncodeError:
        return None
    except Exception:  # spglib can fail on degenerate cells; the formula table still holds the entry
        return None


def _current(h: str) -> bool:
    from matra_hpc.tokens.hashing import HASH_VERSION

    return bool(h) and h.split(":", 1)[0] == HASH_VERSION


def _sequence_hash(tokens: np.ndarray, values: np.ndarray) -> str | None:
    from matra_hpc.tokens import TokenSequence, prototype_hash

    try:
        return prototype_hash(TokenSequence([int(t) for t in tokens], [float(v) for v in values]))
    except Exception:  # a sequence the current vocabulary cannot parse: formula only
        return None


def _structure(lattice: np.ndarray, numbers: np.ndarray, frac: np.ndarray):
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice(lattice), [int(z) for z in numbers], frac)


# --------------------------------------------------------------------------------------------
# Reading one unit


def read_unit(source: Source, unit: Unit) -> Rows:
    if source.kind == "files":
        return _read_files(source, unit)
    if source.kind == "dataset":
        return _read_dataset(source, unit)
    return _read_store(source, unit)


def _read_dataset(source: Source, unit: Unit) -> Rows:
    from matra_hpc.data.readers import SourceSpec, iter_unit_items, load_item

    assert source.spec is not None
    spec = SourceSpec(source.spec["kind"], source.spec["name"], tuple(source.spec["paths"]), source.spec["summary"])
    rows = Rows()
    for k in range(unit.start, unit.stop):
        for n, item in enumerate(iter_unit_items(spec, k)):
            if n % unit.shares != unit.share:
                continue  # another unit's record: skipped undecoded
            loaded = load_item(item)  # no summary: the index needs no energies
            if loaded.reason:
                rows.skip(loaded.reason)
                continue
            s = loaded.structure
            numbers = np.array([sp.Z for sp in s.species], dtype=np.int64)
            rows.add(loaded.id, s.lattice.matrix, s.frac_coords, numbers, structure_hash(s))
    return rows


def _read_store(source: Source, unit: Unit) -> Rows:
    import zarr

    root = zarr.open_group(source.path, mode="r")
    g = root[unit.group] if unit.group else root
    a, b = unit.start, unit.stop
    ids = g["id"][a:b].tolist()
    lattice = np.asarray(g["lattice"][a:b], dtype=np.float64).reshape(-1, 3, 3)
    soff = np.asarray(g["site_offsets"][a:b + 1], dtype=np.int64)
    s0, s1 = int(soff[0]), int(soff[-1])
    frac = np.asarray(g["frac_coords"][s0:s1], dtype=np.float64).reshape(-1, 3)
    numbers = np.asarray(g["numbers"][s0:s1], dtype=np.int64)
    soff = soff - s0
    hashes = [str(h) for h in g["prototype_hash"][a:b].tolist()]
    if source.kind == "generated":
        keep = np.asarray(g["decodes"][a:b], dtype=bool)
    elif source.kind == "screened":
        status = g["status"][a:b].tolist()
        keep = np.array([s == "screened" for s in status], dtype=bool)
        hashes = [""] * len(ids)  # the column holds the generated sequence's hash, not the relaxed one's
    else:
        keep = np.ones(len(ids), dtype=bool)
    tokens = values = offsets = None
    if source.kind == "tokens" and not all(_current(h) for h in hashes):
        offsets = np.asarray(g["offsets"][a:b + 1], dtype=np.int64)
        tokens = np.asarray(g["tokens"][int(offsets[0]):int(offsets[-1])])
        values = np.asarray(g["values"][int(offsets[0]):int(offsets[-1])])
        offsets = offsets - offsets[0]
    rows = Rows()
    for r in range(len(ids)):
        if not keep[r]:
            rows.skip("not_decoded" if source.kind == "generated" else "not_screened")
            continue
        f, z = frac[soff[r]:soff[r + 1]], numbers[soff[r]:soff[r + 1]]
        if not len(z) or not np.all(np.isfinite(lattice[r])) or not np.all(np.isfinite(f)):
            rows.skip("no_structure")
            continue
        h: str | None = hashes[r]
        if not _current(h):
            if tokens is not None and offsets is not None:
                h = _sequence_hash(tokens[offsets[r]:offsets[r + 1]], values[offsets[r]:offsets[r + 1]])
            else:
                h = structure_hash(_structure(lattice[r], z, f))
        rows.add(str(ids[r]), lattice[r], f, z, h)
    return rows


def _read_files(source: Source, unit: Unit) -> Rows:
    from matra_hpc.tokens.structure_io import ParseFailure, iter_structures

    root = Path(source.path)
    files = _structure_files(root)
    if len(files) != source.groups[""]:
        raise StoreError(f"{root} changed while the index was built ({source.groups['']} structure files "
                         f"planned, {len(files)} now): rebuild into a new --out")
    base = root.parent if root.is_dir() else root.parent
    rows = Rows()
    for path in files[unit.start:unit.stop]:
        rel = path.relative_to(base).as_posix()
        for name, structure in iter_structures([str(path)]):
            frame = name[len(str(path)):]  # "" or "#<i>" for multi-frame files
            rid = f"{rel}{frame}"
            if isinstance(structure, ParseFailure):
                rows.skip("parse_error")
                continue
            if not hasattr(structure, "lattice") or not getattr(structure, "is_ordered", False):
                rows.skip("not_periodic" if not hasattr(structure, "lattice") else "disordered")
                continue
            numbers = np.array([sp.Z for sp in structure.species], dtype=np.int64)
            rows.add(rid, structure.lattice.matrix, structure.frac_coords, numbers, structure_hash(structure))
    return rows
