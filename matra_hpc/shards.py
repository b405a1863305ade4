"""Column tables in sharded Zarr stores: the layout the generated and screened stores share.

A table is a dict of numpy columns described by ``{name: (dtype, kind)}``, where kind is
``"row"`` (one value per row), ``"flat"`` (a ragged payload) or ``"offsets"`` (rows + 1 bounds
into a flat column). A shard is written into a private ``.partial-*`` folder, its manifest
last, then renamed into place, so readers and resumes only ever see whole shards.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from matra_hpc.errors import StoreError
from matra_hpc.util import write_json_atomic

Columns = Mapping[str, tuple[Any, str]]

MANIFEST = "manifest.json"
# One crystal per row: 3x3 lattice, ragged sites (fractional coordinates, atomic numbers).
STRUCTURE_COLUMNS: dict[str, tuple[Any, str]] = {
    "lattice": (np.float64, "row"),
    "frac_coords": (np.float64, "flat"),
    "numbers": (np.int16, "flat"),
    "site_offsets": (np.int64, "offsets"),
}
# Flat arrays are chunked so that no chunk of a large shard grows past a few MB.
FLAT_CHUNK = 1 << 20
ROW_CHUNK = 1 << 18
TEXT_CHUNK = 1 << 16


def write_columns(group: zarr.Group, data: Mapping[str, Any], columns: Columns) -> None:
    """Write each column of ``columns`` from ``data`` as an array of the Zarr group."""
    for name, (dtype, kind) in columns.items():
        values = data[name]
        if dtype is str:
            values = np.asarray(values, dtype=object)
            arr = group.create_array(name, shape=values.shape, dtype=str,
                                     chunks=(max(1, min(len(values), TEXT_CHUNK)),), overwrite=True)
        else:
            values = np.ascontiguousarray(values, dtype=dtype)
            lead = FLAT_CHUNK if kind == "flat" else ROW_CHUNK
            chunks = (max(1, min(values.shape[0], lead)),) + values.shape[1:]
            arr = group.create_array(name, shape=values.shape, dtype=dtype, chunks=chunks, overwrite=True)
        if values.size:
            arr[...] = values


def read_columns(group: zarr.Group, columns: Columns, optional: Mapping[str, Any] | None = None
                 ) -> dict[str, np.ndarray]:
    """Read every column of ``columns``; a missing one is a StoreError naming the group.

    ``optional`` maps row columns added to a schema later to the value that rows of an older
    store, which lack them, read as.
    """
    data = {}
    for name, (dtype, _kind) in columns.items():
        if optional and name in optional and name not in group:
            rows = group["id"].shape[0]
            data[name] = np.full(rows, optional[name], dtype=object if dtype is str else dtype)
            continue
        if name not in group:
            raise StoreError(f"{group.store} group {group.path!r} lacks column {name!r}")
        arr = group[name]
        values = arr[...] if arr.size else np.zeros(arr.shape, dtype=object if dtype is str else dtype)
        data[name] = np.asarray(values, dtype=object) if dtype is str else np.asarray(values)
    return data


def concat_columns(tables: list[Mapping[str, np.ndarray]], columns: Columns) -> dict[str, np.ndarray]:
    """Rows of several tables one after another; offsets columns are shifted to stay valid."""
    out: dict[str, np.ndarray] = {}
    for name, (_dtype, kind) in columns.items():
        parts = [t[name] for t in tables]
        if kind == "offsets":
            shifted, base = [parts[0]], parts[0][-1]
            for p in parts[1:]:
                shifted.append(p[1:] + base)
                base = base + p[-1]
            out[name] = np.concatenate(shifted).astype(np.int64)
        else:
            out[name] = np.concatenate(parts)
    return out


def open_store_root(store: str | Path, schema: str, mode: str = "r") -> zarr.Group:
    """The root group of a store, refusing a folder that is not Zarr or has another schema."""
    path = Path(store)
    if not (path / "zarr.json").is_file():
        raise StoreError(f"{path} is not a Zarr store (no zarr.json)")
    try:
        root = zarr.open_group(str(path), mode=mode)
    except Exception as exc:
        raise StoreError(f"cannot open {path} as a Zarr group: {exc}") from exc
    found = root.attrs.get("schema")
    if found != schema:
        raise StoreError(f"{path} has schema {found!r}, expected {schema!r}")
    return root


def commit_shard(final: Path, attrs: dict[str, Any], write: Callable[[zarr.Group], None],
                 manifest: dict[str, Any]) -> bool:
    """Write a shard aside (``write(group)``, then the manifest) and rename it to ``final``.

    Returns False, leaving the finished copy alone, if one was already there or another
    writer committed the same shard first (results are never overwritten silently).
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(f".partial-{final.name}-{uuid.uuid4().hex}")
    group = zarr.open_group(str(partial), mode="w")
    group.attrs.update(attrs)
    write(group)
    write_json_atomic(partial / MANIFEST, manifest)
    if (final / MANIFEST).is_file():
        shutil.rmtree(partial, ignore_errors=True)
        return False
    if final.exists():  # a folder from a killed writer, without a manifest
        shutil.rmtree(final, ignore_errors=True)
    try:
        os.rename(partial, final)
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
        return False
    return True


def finished_shard_numbers(shards_dir: Path) -> list[int]:
    """Numbers of the shards ``s<N>`` under ``shards_dir`` whose manifest is written."""
    if not shards_dir.is_dir():
        return []
    return sorted(int(c.name[1:]) for c in shards_dir.iterdir()
                  if c.name.startswith("s") and c.name[1:].isdigit() and (c / MANIFEST).is_file())


def remove_unfinished(shards_dir: Path) -> None:
    """Drop what a killed writer left: ``.partial-*`` folders and shards without a manifest."""
    if not shards_dir.is_dir():
        return
    for child in shards_dir.iterdir():
        if child.name.startswith(".partial-") or (child.is_dir() and not (child / MANIFEST).is_file()):
            shutil.rmtree(child, ignore_errors=True)


def require_same_fingerprint(path: Path, old: Mapping[str, Any], new: Mapping[str, Any], what: str) -> None:
    """A resume must use the settings the store was started with: name the first that differs."""
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            raise StoreError(
                f"{path} was written by a different {what} ({key}: {old.get(key)!r} there, "
                f"{new.get(key)!r} now); resume needs the same settings, or pick another --out")
