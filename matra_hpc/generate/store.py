"""The generated store (docs/contracts.md section G, schema ``matra-hpc/generated/1``).

Layout (Zarr v3 on a local or shared POSIX filesystem)::

    gen.zarr/                  attrs: schema, created_by, config, vocab, vocab_hash, run_id,
                                      checkpoint {path, sha256}, train_store, temperatures, shards
    gen.zarr/T0.70/            a group per temperature; attrs: temperature, view (after consolidate)
    gen.zarr/T0.70/shards/s3/  one shard's rows (``GeneratedTable`` columns) + manifest.json
    gen.zarr/T0.70/<columns>   the consolidated view of the temperature, with ``dup_run``

A shard is written into a private ``.partial-*`` directory, its ``manifest.json`` last, then
renamed into place: readers and resumes only ever see whole shards. ``consolidate`` rebuilds every
temperature's view from the finished shards (idempotent), marking ``dup_run`` across the whole run
in (temperature, shard, row) order: the first of a set of matching structures is not a duplicate.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zarr

from matra_hpc.errors import StoreError
from matra_hpc.generate.table import GeneratedTable
from matra_hpc.generate.temperatures import group_temperature, temperature_group
from matra_hpc.tokens.format import TOKEN_FORMAT, require_token_format
from matra_hpc.util import write_json_atomic

SCHEMA = "matra-hpc/generated/1"
MANIFEST = "manifest.json"
CLAIMS_DIR = ".claims"


def shard_name(shard: int) -> str:
    return f"s{shard}"


def shard_path(store: Path, temperature: float, shard: int) -> Path:
    return Path(store) / temperature_group(temperature) / "shards" / shard_name(shard)


def shard_done(store: Path, temperature: float, shard: int) -> bool:
    return (shard_path(store, temperature, shard) / MANIFEST).is_file()


def open_root(store: Path, mode: str = "r") -> zarr.Group:
    """The store's root group, refusing anything that is not a generated store."""
    path = Path(store)
    if not (path / "zarr.json").is_file():
        raise StoreError(f"{path} is not a Zarr store (no zarr.json)")
    try:
        root = zarr.open_group(str(path), mode=mode)
    except Exception as exc:
        raise StoreError(f"cannot open {path} as a Zarr group: {exc}") from exc
    schema = root.attrs.get("schema")
    if schema != SCHEMA:
        raise StoreError(f"{path} has schema {schema!r}, expected {SCHEMA!r}")
    require_token_format(root.attrs.get("token_format"), f"generated store {path}",
                         "generate again into a new --out, from a checkpoint of this token format")
    return root


def init_store(store: Path, attrs: dict[str, Any], fingerprint: dict[str, Any]) -> dict[str, Any]:
    """Create the store, or reopen it to resume: same fingerprint required. Returns root attrs.

    Also removes what a killed run left behind (partial shards, shard folders without a
    manifest, old claims), so this must run while no other process writes the store.
    """
    path = Path(store)
    if path.exists() and any(path.iterdir()):
        root = open_root(path, mode="r+")
        old = root.attrs.get("fingerprint", {})
        for key in sorted(set(old) | set(fingerprint)):
            if old.get(key) != fingerprint.get(key):
                raise StoreError(
                    f"{path} was written by a different generation ({key}: {old.get(key)!r} there, "
                    f"{fingerprint.get(key)!r} now); resume needs the same settings, or pick another --out"
                )
    else:
        path.mkdir(parents=True, exist_ok=True)
        root = zarr.open_group(str(path), mode="w")
        # The sequences' format (matra_hpc.tokens.format): readers refuse another one.
        root.attrs.update({"token_format": TOKEN_FORMAT, **attrs, "fingerprint": fingerprint})
    for t in fingerprint["temperatures"]:
        tgroup = root.require_group(temperature_group(t))
        if "temperature" not in tgroup.attrs:
            tgroup.attrs["temperature"] = t
        tgroup.require_group("shards")
        shards_dir = path / temperature_group(t) / "shards"
        for child in shards_dir.iterdir():
            if child.name.startswith(".partial-") or (child.is_dir() and not (child / MANIFEST).is_file()):
                shutil.rmtree(child, ignore_errors=True)
    shutil.rmtree(path / CLAIMS_DIR, ignore_errors=True)
    return dict(root.attrs)


def write_shard(store: Path, temperature: float, shard: int, table: GeneratedTable, manifest: dict) -> bool:
    """Write one finished shard atomically; False if a finished copy was already there."""
    final = shard_path(store, temperature, shard)
    partial = final.with_name(f".partial-{final.name}-{uuid.uuid4().hex}")
    group = zarr.open_group(str(partial), mode="w")
    group.attrs.update({"temperature": temperature, "shard": shard, "rows": len(table)})
    table.write(group)
    write_json_atomic(partial / MANIFEST, {**manifest, "rows": len(table)})
    if (final / MANIFEST).is_file():
        shutil.rmtree(partial, ignore_errors=True)
        return False
    if final.exists():  # a folder from a killed writer, without a manifest
        shutil.rmtree(final, ignore_errors=True)
    try:
        os.rename(partial, final)
    except OSError:
        # Another writer committed the same shard first; its copy is bit-identical.
        shutil.rmtree(partial, ignore_errors=True)
        return False
    return True


def read_shard(store: Path, temperature: float, shard: int) -> GeneratedTable:
    path = shard_path(store, temperature, shard)
    if not (path / MANIFEST).is_file():
        raise StoreError(f"shard {path} is not finished (no {MANIFEST})")
    return GeneratedTable.read(zarr.open_group(str(path), mode="r"))


def read_manifest(store: Path, temperature: float, shard: int) -> dict:
    return json.loads((shard_path(store, temperature, shard) / MANIFEST).read_text())


def finished_shards(store: Path, temperature: float) -> list[int]:
    shards_dir = Path(store) / temperature_group(temperature) / "shards"
    if not shards_dir.is_dir():
        return []
    done = []
    for child in shards_dir.iterdir():
        if child.name.startswith("s") and child.name[1:].isdigit() and (child / MANIFEST).is_file():
            done.append(int(child.name[1:]))
    return sorted(done)


class TaskClaims:
    """Task claims of one attempt: creating a file with O_EXCL is atomic, also over NFS v3+."""

    def __init__(self, store: Path, attempt: str) -> None:
        self.dir = Path(store) / CLAIMS_DIR / attempt
        self.dir.mkdir(parents=True, exist_ok=True)

    def claim(self, task_index: int) -> bool:
        try:
            fd = os.open(self.dir / f"{task_index}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        os.close(fd)
        return True


def clear_claims(store: Path) -> None:
    shutil.rmtree(Path(store) / CLAIMS_DIR, ignore_errors=True)


@dataclass
class ConsolidateResult:
    temperatures: list[float]
    rows: dict[str, int]
    shards_done: dict[str, int]
    shards_total: int
    dup_run: dict[str, int]

    @property
    def complete(self) -> bool:
        return all(n == self.shards_total for n in self.shards_done.values())


def consolidate(store: Path, matcher_factory=None) -> ConsolidateResult:
    """Build every temperature's view from its finished shards and mark ``dup_run``; idempotent."""
    from matra_hpc.generate.duplicates import PrototypeIndex

    path = Path(store)
    root = open_root(path, mode="r+")
    temperatures = [float(t) for t in root.attrs["fingerprint"]["temperatures"]]
    n_shards = int(root.attrs["fingerprint"]["shards"])
    seen = PrototypeIndex(matcher_factory() if matcher_factory else None)
    result = ConsolidateResult(temperatures, {}, {}, n_shards, {})
    for t in temperatures:
        name = temperature_group(t)
        tgroup = root[name]
        if "view" in tgroup.attrs:
            del tgroup.attrs["view"]  # readers see no view while it is being rewritten
        shards = finished_shards(path, t)
        table = GeneratedTable.concat([read_shard(path, t, s) for s in shards])
        dup_run = [False] * len(table)
        for r in range(len(table)):
            key = str(table.prototype_hash[r])
            if key:
                dup_run[r] = seen.check_and_add(key, table.row_structure(r))
        import numpy as np

        table.dup_run = np.asarray(dup_run, dtype=bool)
        table.write(tgroup)
        tgroup.attrs["view"] = {"shards": shards, "rows": len(table), "shards_total": n_shards}
        result.rows[name] = len(table)
        result.shards_done[name] = len(shards)
        result.dup_run[name] = int(table.dup_run.sum())
    return result


def view_is_current(store: Path, temperature: float) -> bool:
    root = open_root(store)
    view = root[temperature_group(temperature)].attrs.get("view")
    return view is not None and view.get("shards") == finished_shards(store, temperature)


def read_view(store: Path, temperature: float) -> GeneratedTable:
    root = open_root(store)
    tgroup = root[temperature_group(temperature)]
    if "view" not in tgroup.attrs:
        raise StoreError(f"{store}/{temperature_group(temperature)} has no consolidated view")
    return GeneratedTable.read(tgroup)


def store_temperatures(store: Path) -> list[float]:
    root = open_root(store)
    return [group_temperature(temperature_group(float(t))) for t in root.attrs["fingerprint"]["temperatures"]]
