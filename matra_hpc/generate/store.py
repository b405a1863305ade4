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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zarr

from matra_hpc import __version__
from matra_hpc.errors import StoreError
from matra_hpc.generate.table import GeneratedTable
from matra_hpc.generate.temperatures import group_temperature, temperature_group
from matra_hpc.shards import (
    MANIFEST,
    commit_shard,
    finished_shard_numbers,
    open_store_root,
    remove_unfinished,
    require_same_fingerprint,
)
from matra_hpc.tokens.format import TOKEN_FORMAT, require_token_format
from matra_hpc.util import git_revision

SCHEMA = "matra-hpc/generated/1"
CLAIMS_DIR = ".claims"


def shard_name(shard: int) -> str:
    return f"s{shard}"


def shard_path(store: Path, temperature: float, shard: int) -> Path:
    return Path(store) / temperature_group(temperature) / "shards" / shard_name(shard)


def shard_done(store: Path, temperature: float, shard: int) -> bool:
    return (shard_path(store, temperature, shard) / MANIFEST).is_file()


def open_root(store: Path, mode: str = "r") -> zarr.Group:
    """The store's root group, refusing anything that is not a generated store."""
    root = open_store_root(store, SCHEMA, mode)
    require_token_format(root.attrs.get("token_format"), f"generated store {store}",
                         "generate again into a new --out, from a checkpoint of this token format")
    return root


def run_id_for(explicit: str | None, run_dir: str | None, prefix: str) -> str:
    """The run id: the one given, else the run directory's name, else ``<prefix>-<UTC time>``."""
    return explicit or (Path(run_dir).name if run_dir else None) or (
        f"{prefix}-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))


def new_store_attrs(*, config: dict[str, Any], vocab, run_id: str, run_dir: str | None,
                    checkpoint: dict[str, Any] | None, train_store: str | None,
                    train_fingerprint: dict[str, Any] | None, temperatures: list[float], shards: int,
                    per_temp: int, **extra: Any) -> dict[str, Any]:
    """The root attrs of a new generated store (contract G), for a model run or a baseline."""
    return {
        "schema": SCHEMA,
        "created_by": {"package": __version__, "git": git_revision()},
        "config": config,
        "vocab": vocab.to_json(),
        "vocab_hash": vocab.hash,
        "run_id": run_id,
        "run_dir": run_dir,
        "checkpoint": checkpoint,
        **extra,
        "train_store": ({"path": str(Path(train_store).resolve()), "fingerprint": train_fingerprint}
                        if train_store else None),
        "temperatures": list(temperatures),
        "shards": shards,
        "per_temp": per_temp,
    }


def init_store(store: Path, attrs: dict[str, Any], fingerprint: dict[str, Any]) -> dict[str, Any]:
    """Create the store, or reopen it to resume: same fingerprint required. Returns root attrs.

    Also removes what a killed run left behind (partial shards, shard folders without a
    manifest, old claims), so this must run while no other process writes the store.
    """
    path = Path(store)
    if path.exists() and any(path.iterdir()):
        root = open_root(path, mode="r+")
        require_same_fingerprint(path, root.attrs.get("fingerprint", {}), fingerprint, "generation")
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
        remove_unfinished(path / temperature_group(t) / "shards")
    shutil.rmtree(path / CLAIMS_DIR, ignore_errors=True)
    return dict(root.attrs)


def write_shard(store: Path, temperature: float, shard: int, table: GeneratedTable, manifest: dict) -> bool:
    """Write one finished shard atomically; False if a finished copy was already there."""
    attrs = {"temperature": temperature, "shard": shard, "rows": len(table)}
    return commit_shard(shard_path(store, temperature, shard), attrs, table.write,
                        {**manifest, "rows": len(table)})


def read_shard(store: Path, temperature: float, shard: int) -> GeneratedTable:
    path = shard_path(store, temperature, shard)
    if not (path / MANIFEST).is_file():
        raise StoreError(f"shard {path} is not finished (no {MANIFEST})")
    return GeneratedTable.read(zarr.open_group(str(path), mode="r"))


def read_manifest(store: Path, temperature: float, shard: int) -> dict:
    return json.loads((shard_path(store, temperature, shard) / MANIFEST).read_text())


def finished_shards(store: Path, temperature: float) -> list[int]:
    return finished_shard_numbers(Path(store) / temperature_group(temperature) / "shards")


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
