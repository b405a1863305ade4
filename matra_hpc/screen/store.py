"""The screened store (contract section J, schema ``matra-hpc/screened/1``) and its readers.

Layout follows the generated store (section G)::

    screened.zarr/                  attrs: schema, created_by, config, generated, relax, energy, ...
    screened.zarr/T0.70/            a group per temperature; attrs: temperature, view
    screened.zarr/T0.70/shards/s3/  one shard's rows + manifest.json (written last, then renamed)
    screened.zarr/T0.70/<columns>   consolidated view with ``unique``/``dup_of``
    screened.zarr/status/*.jsonl    append-only per-candidate status log (one file per writer)

Public readers for later stages: :func:`iter_rows` (one :class:`ScreenedRow` per candidate) and
:func:`read_status` (the current status per id from the log). Writers: :func:`init_store`,
:func:`write_shard`, :func:`consolidate`, :func:`append_status`.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from matra_hpc.errors import StoreError
from matra_hpc.generate.temperatures import temperature_group
from matra_hpc.shards import (
    MANIFEST,
    STRUCTURE_COLUMNS,
    commit_shard,
    concat_columns,
    finished_shard_numbers,
    open_store_root,
    read_columns,
    remove_unfinished,
    require_same_fingerprint,
    write_columns,
)

__all__ = [
    "SCHEMA", "STATUSES", "REASONS", "ScreenedRow", "RowBuilder", "iter_rows", "read_status",
    "append_status", "open_root", "init_store", "write_shard", "read_shard", "shard_done",
    "finished_shards", "consolidate", "read_view", "store_temperatures",
]

SCHEMA = "matra-hpc/screened/1"
STATUS_DIR = "status"
SCREEN_STATUS_FILE = "screen.jsonl"

STATUSES = ("not_screened", "failed", "rejected", "screened")
REASONS: dict[str, tuple[str, ...]] = {
    "screened": ("",),
    "not_screened": ("not_decoded", "not_screened_bonds", "not_screened_dup_train", "not_screened_limit",
                     "bad_geometry", "unsupported_element", "too_many_atoms"),
    "failed": ("relax_nan", "relax_exploded", "relax_volume", "relax_overlap", "relax_unconverged",
               "relax_error"),
    "rejected": ("disconnected", "no_reference"),
}

# column -> (dtype, kind); "row": one per row, "flat": ragged sites, "offsets": rows + 1
COLUMNS: dict[str, tuple[Any, str]] = {
    "id": (str, "row"),
    "status": (str, "row"),
    "reason": (str, "row"),
    "formula": (str, "row"),
    "prototype_hash": (str, "row"),
    "relaxed": (np.bool_, "row"),
    **STRUCTURE_COLUMNS,
    "energy_per_atom": (np.float64, "row"),
    "e_hull": (np.float64, "row"),
    "e_hull_method": (str, "row"),
    "connected": (np.bool_, "row"),
    "n_components": (np.int16, "row"),
    "novel": (np.bool_, "row"),
    "novel_match": (str, "row"),
    "unique": (np.bool_, "row"),
    "dup_of": (str, "row"),
    "n_steps": (np.int32, "row"),
    "max_force": (np.float64, "row"),
    "volume_change": (np.float64, "row"),
    "potential": (str, "row"),
    "e_hull_direct": (np.float64, "row"),
    "e_hull_direct_method": (str, "row"),
}
OPTIONAL_COLUMNS = {"e_hull_direct": float("nan"), "e_hull_direct_method": ""}
"""Columns added after the first stores were written: a store without them reads as these values."""


@dataclass
class ScreenedRow:
    """One candidate as the screen stage left it (what the DFT and evaluation stages read)."""

    id: str
    temperature: float
    status: str
    reason: str
    formula: str
    prototype_hash: str
    relaxed: bool
    structure: Any  # pymatgen Structure, or None when the row never decoded
    energy_per_atom: float
    e_hull: float
    e_hull_method: str
    connected: bool
    n_components: int
    novel: bool
    novel_match: str
    unique: bool
    dup_of: str
    n_steps: int
    max_force: float
    volume_change: float
    potential: str
    e_hull_direct: float = float("nan")
    """A second e-hull estimate, predicted directly from the relaxed structure (alignn); NaN if none."""
    e_hull_direct_method: str = ""

    @property
    def is_candidate(self) -> bool:
        """Screened, novel and unique: what the DFT stage takes (ranked by ``e_hull``)."""
        return self.status == "screened" and self.novel and self.unique


def check_status(status: str, reason: str) -> None:
    if status not in REASONS or reason not in REASONS[status]:
        raise ValueError(f"status {status!r} with reason {reason!r} is not in the closed list of contract J")


@dataclass
class RowBuilder:
    """Accumulates screened rows (dicts of column values), then freezes them into arrays."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, *, id: str, status: str, reason: str = "", structure=None, relaxed: bool = False,
            formula: str = "", prototype_hash: str = "", energy_per_atom: float = float("nan"),
            e_hull: float = float("nan"), e_hull_method: str = "", connected: bool = False,
            n_components: int = 0, novel: bool = False, novel_match: str = "", unique: bool = False,
            dup_of: str = "", n_steps: int = 0, max_force: float = float("nan"),
            volume_change: float = float("nan"), potential: str = "", e_hull_direct: float = float("nan"),
            e_hull_direct_method: str = "") -> None:
        check_status(status, reason)
        if structure is not None:
            lattice = np.asarray(structure.lattice.matrix, dtype=np.float64)
            frac = np.asarray(structure.frac_coords, dtype=np.float64).reshape(-1, 3)
            numbers = np.asarray(structure.atomic_numbers, dtype=np.int16)
            formula = formula or structure.composition.reduced_formula
        else:
            lattice, frac, numbers = np.full((3, 3), np.nan), np.zeros((0, 3)), np.zeros(0, dtype=np.int16)
        self.rows.append(dict(
            id=id, status=status, reason=reason, formula=formula, prototype_hash=prototype_hash,
            relaxed=relaxed, lattice=lattice, frac_coords=frac, numbers=numbers,
            energy_per_atom=energy_per_atom, e_hull=e_hull, e_hull_method=e_hull_method,
            connected=connected, n_components=n_components, novel=novel, novel_match=novel_match,
            unique=unique, dup_of=dup_of, n_steps=n_steps, max_force=max_force,
            volume_change=volume_change, potential=potential, e_hull_direct=e_hull_direct,
            e_hull_direct_method=e_hull_direct_method,
        ))

    def build(self) -> dict[str, np.ndarray]:
        data: dict[str, np.ndarray] = {}
        for name, (dtype, kind) in COLUMNS.items():
            if kind == "offsets":
                continue
            items = [r[name] for r in self.rows]
            if kind == "flat":
                empty = np.zeros((0, 3)) if name == "frac_coords" else np.zeros(0, dtype=dtype)
                data[name] = np.concatenate([empty, *items]).astype(dtype)
            elif dtype is str:
                data[name] = np.asarray(items, dtype=object).reshape(len(items))
            elif name == "lattice":
                data[name] = np.stack(items).astype(np.float64) if items else np.zeros((0, 3, 3))
            else:
                data[name] = np.asarray(items, dtype=dtype).reshape(len(items))
        counts = [len(r["numbers"]) for r in self.rows]
        data["site_offsets"] = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return data


def _concat(tables: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return concat_columns(tables, COLUMNS) if tables else RowBuilder().build()


def _structure(data: dict[str, np.ndarray], r: int):
    lattice = data["lattice"][r]
    a, b = data["site_offsets"][r], data["site_offsets"][r + 1]
    if b == a or not np.all(np.isfinite(lattice)):
        return None
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice(lattice), data["numbers"][a:b].astype(int), data["frac_coords"][a:b])


# ---------------------------------------------------------------- store files


def open_root(store: str | Path, mode: str = "r") -> zarr.Group:
    """The store's root group, refusing anything that is not a screened store."""
    return open_store_root(store, SCHEMA, mode)


def shard_path(store: Path, temperature: float, shard: int) -> Path:
    return Path(store) / temperature_group(temperature) / "shards" / f"s{shard}"


def shard_done(store: Path, temperature: float, shard: int) -> bool:
    return (shard_path(store, temperature, shard) / MANIFEST).is_file()


def init_store(store: str | Path, attrs: dict[str, Any], fingerprint: dict[str, Any],
               temperatures: list[float]) -> dict[str, Any]:
    """Create the store, or reopen it to resume (same fingerprint required); returns root attrs.

    Also removes what a killed run left behind (partial shards, shard folders without a
    manifest), so this must run while no other process writes the store.
    """
    path = Path(store)
    if path.exists() and any(path.iterdir()):
        root = open_root(path, mode="r+")
        require_same_fingerprint(path, root.attrs.get("fingerprint", {}), fingerprint, "screening")
    else:
        path.mkdir(parents=True, exist_ok=True)
        root = zarr.open_group(str(path), mode="w")
        root.attrs.update({**attrs, "fingerprint": fingerprint})
    (path / STATUS_DIR).mkdir(exist_ok=True)
    for t in temperatures:
        tgroup = root.require_group(temperature_group(t))
        if "temperature" not in tgroup.attrs:
            tgroup.attrs["temperature"] = t
        tgroup.require_group("shards")
        remove_unfinished(path / temperature_group(t) / "shards")
    return dict(root.attrs)


def write_shard(store: str | Path, temperature: float, shard: int, data: dict[str, np.ndarray],
                manifest: dict[str, Any]) -> bool:
    """Write one finished shard atomically; False if a finished copy was already there."""
    rows = len(data["id"])
    return commit_shard(shard_path(Path(store), temperature, shard),
                        {"temperature": temperature, "shard": shard, "rows": rows},
                        lambda group: write_columns(group, data, COLUMNS), {**manifest, "rows": rows})


def read_shard(store: str | Path, temperature: float, shard: int) -> dict[str, np.ndarray]:
    path = shard_path(Path(store), temperature, shard)
    if not (path / MANIFEST).is_file():
        raise StoreError(f"shard {path} is not finished (no {MANIFEST})")
    return read_columns(zarr.open_group(str(path), mode="r"), COLUMNS, OPTIONAL_COLUMNS)


def read_manifest(store: str | Path, temperature: float, shard: int) -> dict[str, Any]:
    return json.loads((shard_path(Path(store), temperature, shard) / MANIFEST).read_text())


def finished_shards(store: str | Path, temperature: float) -> list[int]:
    return finished_shard_numbers(Path(store) / temperature_group(temperature) / "shards")


def store_temperatures(store: str | Path) -> list[float]:
    root = open_root(store)
    return [round(float(t), 2) for t in root.attrs["temperatures"]]


# ---------------------------------------------------------------- consolidate


def consolidate(store: str | Path, uniqueness=None) -> dict[str, Any]:
    """Build each temperature's view from its finished shards; mark ``unique``; idempotent.

    Uniqueness runs over the whole run in (temperature, shard, row) order, so the first of a set
    of matching relaxed candidates is the unique one, wherever the shards were computed.
    ``uniqueness`` has ``first_seen(candidate_id, structure) -> id | None``; default: the
    run-uniqueness index of ``matra_hpc.screen.novelty``. Also rewrites ``status/screen.jsonl``.
    """
    if uniqueness is None:
        from matra_hpc.screen.novelty import RunUniqueness

        uniqueness = RunUniqueness()
    path = Path(store)
    root = open_root(path, mode="r+")
    n_shards = int(root.attrs["shards"])
    run_id = str(root.attrs.get("run_id", ""))
    summary: dict[str, Any] = {"rows": {}, "shards_done": {}, "shards_total": n_shards, "unique": {}}
    events: list[dict[str, Any]] = []
    now = _utc_now()
    for t in [round(float(x), 2) for x in root.attrs["temperatures"]]:
        name = temperature_group(t)
        tgroup = root[name]
        if "view" in tgroup.attrs:
            del tgroup.attrs["view"]  # readers see no view while it is being rewritten
        shards = finished_shards(path, t)
        data = _concat([read_shard(path, t, s) for s in shards])
        n = len(data["id"])
        unique = np.zeros(n, dtype=bool)
        dup_of = np.asarray([""] * n, dtype=object)
        for r in range(n):
            if not data["relaxed"][r] or data["status"][r] not in ("screened", "rejected"):
                continue
            structure = _structure(data, r)
            if structure is None:
                continue
            first = uniqueness.first_seen(str(data["id"][r]), structure)
            unique[r] = first is None
            dup_of[r] = first or ""
        data["unique"], data["dup_of"] = unique, dup_of
        write_columns(tgroup, data, COLUMNS)
        tgroup.attrs["view"] = {"shards": shards, "rows": n, "shards_total": n_shards}
        summary["rows"][name] = n
        summary["shards_done"][name] = len(shards)
        summary["unique"][name] = int(unique.sum())
        for r in range(n):
            events.append({"id": str(data["id"][r]), "stage": "screen", "status": str(data["status"][r]),
                           "reason": str(data["reason"][r]), "time": now, "run": run_id,
                           "e_hull": _json_float(data["e_hull"][r]), "novel": bool(data["novel"][r]),
                           "unique": bool(unique[r])})
    status_dir = path / STATUS_DIR
    status_dir.mkdir(exist_ok=True)
    tmp = status_dir / f".{SCREEN_STATUS_FILE}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "w") as fh:
        for event in events:
            fh.write(json.dumps(event, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, status_dir / SCREEN_STATUS_FILE)
    summary["complete"] = all(v == n_shards for v in summary["shards_done"].values())
    return summary


def _json_float(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def read_view(store: str | Path, temperature: float) -> dict[str, np.ndarray]:
    """The consolidated columns of one temperature (dict of numpy arrays)."""
    root = open_root(store)
    tgroup = root[temperature_group(temperature)]
    if "view" not in tgroup.attrs:
        raise StoreError(f"{store}/{temperature_group(temperature)} has no consolidated view "
                         "(the screening is unfinished; rerun it to resume)")
    return read_columns(tgroup, COLUMNS, OPTIONAL_COLUMNS)


# ---------------------------------------------------------------- public readers


def iter_rows(store: str | Path, temperatures: list[float] | None = None,
              status: str | None = None) -> Iterator[ScreenedRow]:
    """Every candidate of the screened store's consolidated views, in (T, shard, row) order.

    ``temperatures`` restricts to those groups, ``status`` to one status (e.g. ``"screened"``).
    """
    temps = store_temperatures(store) if temperatures is None else [round(float(t), 2) for t in temperatures]
    for t in temps:
        data = read_view(store, t)
        for r in range(len(data["id"])):
            if status is not None and data["status"][r] != status:
                continue
            yield ScreenedRow(
                id=str(data["id"][r]), temperature=t, status=str(data["status"][r]),
                reason=str(data["reason"][r]), formula=str(data["formula"][r]),
                prototype_hash=str(data["prototype_hash"][r]), relaxed=bool(data["relaxed"][r]),
                structure=_structure(data, r), energy_per_atom=float(data["energy_per_atom"][r]),
                e_hull=float(data["e_hull"][r]), e_hull_method=str(data["e_hull_method"][r]),
                connected=bool(data["connected"][r]), n_components=int(data["n_components"][r]),
                novel=bool(data["novel"][r]), novel_match=str(data["novel_match"][r]),
                unique=bool(data["unique"][r]), dup_of=str(data["dup_of"][r]),
                n_steps=int(data["n_steps"][r]), max_force=float(data["max_force"][r]),
                volume_change=float(data["volume_change"][r]), potential=str(data["potential"][r]),
                e_hull_direct=float(data["e_hull_direct"][r]),
                e_hull_direct_method=str(data["e_hull_direct_method"][r]),
            )


_STAGE_ORDER = {"screen": 0, "dft": 1}


def read_status(store: str | Path) -> dict[str, dict[str, Any]]:
    """The current status event per candidate id: its last event by time over every log file.

    Events with equal times are ordered by stage (screen before dft), then by file and line.
    A torn last line (a writer killed mid-write) is skipped.
    """
    status_dir = Path(store) / STATUS_DIR
    latest: dict[str, tuple[tuple, dict[str, Any]]] = {}
    if not status_dir.is_dir():
        return {}
    for f_index, path in enumerate(sorted(status_dir.glob("*.jsonl"))):
        with open(path) as fh:
            for line_no, line in enumerate(fh):
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if not isinstance(event, dict) or "id" not in event:
                    continue
                key = (str(event.get("time", "")), _STAGE_ORDER.get(event.get("stage"), 2), f_index, line_no)
                old = latest.get(event["id"])
                if old is None or key >= old[0]:
                    latest[event["id"]] = (key, event)
    return {cid: event for cid, (_key, event) in latest.items()}


def append_status(store: str | Path, writer: str, events: list[dict[str, Any]]) -> Path:
    """Append events to ``status/<writer>.jsonl`` (the file of one writer, e.g. ``dft-rank3``).

    Each event needs ``id``, ``stage``, ``status``; ``time`` defaults to now (UTC). One ``write``
    per line on an ``O_APPEND`` descriptor, so a kill leaves at most one torn last line, which
    :func:`read_status` skips.
    """
    if not writer or "/" in writer or writer.startswith("."):
        raise ValueError(f"bad status writer name {writer!r}")
    if writer == SCREEN_STATUS_FILE.removesuffix(".jsonl"):
        raise ValueError("status/screen.jsonl belongs to the screen stage's consolidate")
    status_dir = Path(store) / STATUS_DIR
    status_dir.mkdir(exist_ok=True)
    path = status_dir / f"{writer}.jsonl"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for event in events:
            for key in ("id", "stage", "status"):
                if key not in event:
                    raise ValueError(f"status event lacks {key!r}: {event}")
            event = {"time": _utc_now(), "reason": "", **event}
            os.write(fd, (json.dumps(event, sort_keys=True) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return path
