"""The token store on disk (docs/contracts.md section C): shards, manifests, the consolidated view.

Layout of ``tokens.zarr/`` (a Zarr v3 group):

- root attrs: ``schema``, ``created_by``, ``config``, ``vocab``, ``vocab_hash``, ``sources``,
  ``energy``; after consolidation also ``n_rows``, ``split_counts``, ``content_hash`` and
  ``consolidated`` (written last: a store without it is incomplete).
- ``shards/<id>/``: the same arrays as the root, rows of that shard only, then
  ``manifest.json`` written last and atomically. One writer per shard, so writers never share a
  chunk; a shard without a manifest is unfinished and is redone from scratch on resume.
- ``shards/plan.json``: every shard id of the run, written once all inputs were read.
- root arrays: the consolidated view training reads, rows in shard-id order.
- ``report.json``: rejections per reason with their ids, encodable fraction, split counts.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from matra_hpc.errors import StoreError
from matra_hpc.tokens.format import require_token_format
from matra_hpc.util import write_json_atomic

SCHEMA = "matra-hpc/tokens/1"
MANIFEST = "manifest.json"
PLAN = "plan.json"

# name -> (dtype, axis the array grows along, trailing shape)
ARRAYS: dict[str, tuple[str, str, tuple[int, ...]]] = {
    "tokens": ("int32", "token", ()),
    "values": ("float64", "token", ()),
    "offsets": ("int64", "offset", ()),
    "id": ("str", "row", ()),
    "source": ("str", "row", ()),
    "split": ("str", "row", ()),
    "formula": ("str", "row", ()),
    "prototype_hash": ("str", "row", ()),
    "spacegroup": ("int16", "row", ()),
    "e_above_hull": ("float64", "row", ()),
    "e_form": ("float64", "row", ()),
    "lattice": ("float64", "row", (3, 3)),
    "frac_coords": ("float64", "site", (3,)),
    "numbers": ("int16", "site", ()),
    "site_offsets": ("int64", "site_offset", ()),
    "n_sites_conventional": ("int32", "row", ()),
    "n_sites_primitive": ("int32", "row", ()),
}
# Chunk lengths of the consolidated view along its growing axis.
_ROOT_CHUNKS = {"token": 1 << 20, "offset": 1 << 16, "row": 1 << 16, "site": 1 << 18, "site_offset": 1 << 16}


def _incomplete_hint(path: Path) -> str:
    return (f"rerun the same `matra-hpc data prepare ... --out {path}` (finished shards are kept) "
            f"or `matra-hpc data consolidate {path}`")


# --------------------------------------------------------------------------------------------
# Rows of one shard


class ShardRows:
    """Columns of one shard, filled row by row."""

    def __init__(self) -> None:
        self.cols: dict[str, list[Any]] = {name: [] for name in ARRAYS}
        self.n_tokens = 0
        self.n_sites = 0
        self.cols["offsets"].append(0)
        self.cols["site_offsets"].append(0)

    def __len__(self) -> int:
        return len(self.cols["id"])

    def add(self, *, tokens: Any, values: Any, id: str, source: str, split: str, formula: str,
            prototype_hash: str, spacegroup: int, e_above_hull: float, e_form: float, lattice: Any,
            frac_coords: Any, numbers: Any, n_sites_primitive: int) -> None:
        tokens = np.asarray(tokens, dtype=np.int32)
        values = np.asarray(values, dtype=np.float64)
        frac = np.asarray(frac_coords, dtype=np.float64).reshape(-1, 3)
        c = self.cols
        c["tokens"].append(tokens)
        c["values"].append(values)
        self.n_tokens += len(tokens)
        c["offsets"].append(self.n_tokens)
        c["frac_coords"].append(frac)
        c["numbers"].append(np.asarray(numbers, dtype=np.int16))
        self.n_sites += len(frac)
        c["site_offsets"].append(self.n_sites)
        for name, value in (("id", id), ("source", source), ("split", split), ("formula", formula),
                            ("prototype_hash", prototype_hash), ("spacegroup", spacegroup),
                            ("e_above_hull", e_above_hull), ("e_form", e_form),
                            ("n_sites_conventional", len(frac)), ("n_sites_primitive", n_sites_primitive)):
            c[name].append(value)
        c["lattice"].append(np.asarray(lattice, dtype=np.float64).reshape(3, 3))

    def arrays(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for name, (dtype, axis, trailing) in ARRAYS.items():
            col = self.cols[name]
            if axis in ("token", "site") or name == "lattice":
                out[name] = (np.concatenate(col).astype(dtype) if col
                             else np.zeros((0, *trailing), dtype=dtype))
            elif dtype == "str":
                out[name] = np.array(col, dtype=object) if col else np.zeros(0, dtype=object)
            else:
                out[name] = np.asarray(col, dtype=dtype).reshape(-1, *trailing)
        out["lattice"] = out["lattice"].reshape(-1, 3, 3)
        return out


# --------------------------------------------------------------------------------------------
# Writing


def shard_dir(store: Path | str, shard_id: str) -> Path:
    return Path(store) / "shards" / shard_id


def shard_done(store: Path | str, shard_id: str) -> bool:
    return (shard_dir(store, shard_id) / MANIFEST).is_file()


def _create(group: Any, name: str, data: np.ndarray, chunk: int) -> Any:
    dtype, _, trailing = ARRAYS[name]
    n = len(data)
    arr = group.create_array(
        name, shape=(n, *trailing), dtype=str if dtype == "str" else dtype,
        chunks=(max(1, min(chunk, n)), *trailing), overwrite=True,
    )
    if n:
        arr[...] = data
    return arr


def write_shard(store: Path | str, shard_id: str, arrays: dict[str, np.ndarray], manifest: dict[str, Any]) -> None:
    """Write one shard's arrays, then its manifest (last, atomically)."""
    import zarr

    target = shard_dir(store, shard_id)
    if target.exists():
        shutil.rmtree(target)  # a partial shard from a killed run: start it over
    group = zarr.open_group(str(target), mode="w")
    for name in ARRAYS:
        # One chunk per shard array: writers never share a chunk, readers do few reads.
        _create(group, name, arrays[name], max(1, len(arrays[name])))
    write_json_atomic(target / MANIFEST, manifest)


def clear_unfinished_shard(store: Path | str, shard_id: str) -> None:
    target = shard_dir(store, shard_id)
    if target.exists() and not (target / MANIFEST).exists():
        shutil.rmtree(target)


# --------------------------------------------------------------------------------------------
# Opening and checking


def _open_root(path: Path, mode: str) -> Any:
    import zarr

    if not path.exists():
        raise StoreError(f"{path} does not exist: build it with `matra-hpc data prepare ... --out {path}`")
    if not (path / "zarr.json").is_file():
        raise StoreError(f"{path} is not a Zarr v3 store (no zarr.json): pass a store made by "
                         f"`matra-hpc data prepare`, or delete it and prepare again")
    try:
        root = zarr.open_group(str(path), mode=mode)
    except Exception as exc:
        raise StoreError(f"{path} cannot be opened as a Zarr group ({type(exc).__name__}); delete it and "
                         f"prepare again") from None
    schema = root.attrs.get("schema")
    if schema != SCHEMA:
        raise StoreError(f"{path} is not a matra-hpc token store (schema {schema!r}, expected {SCHEMA!r}): "
                         f"pass a store made by `matra-hpc data prepare`, or delete it and prepare again")
    require_token_format(root.attrs.get("token_format"), f"token store {path}",
                         "rebuild it with `matra-hpc data prepare ... --overwrite` (or delete it)")
    return root


def open_token_store(path: Path | str, verify: bool = False) -> Any:
    """Open a finished token store read-only, refusing foreign, unfinished or truncated ones.

    ``verify=True`` also re-reads every array and checks the content hash recorded at
    consolidation (catches deleted or damaged chunk files, which Zarr would read as fill values).
    """
    path = Path(path)
    root = _open_root(path, "r")
    done = root.attrs.get("consolidated")
    if not done:
        raise StoreError(f"{path} is incomplete (its consolidated view was never finished): {_incomplete_hint(path)}")
    missing = [n for n in ARRAYS if not _has_array(root, n)]
    if missing:
        raise StoreError(f"{path} is truncated (missing arrays {', '.join(missing)}): {_incomplete_hint(path)}")
    n_rows = int(root.attrs.get("n_rows", -1))
    shapes_ok = (
        root["offsets"].shape[0] == n_rows + 1 and root["site_offsets"].shape[0] == n_rows + 1
        and all(root[n].shape[0] == n_rows for n, (_, axis, _) in ARRAYS.items() if axis == "row")
        and root["values"].shape[0] == root["tokens"].shape[0]
        and root["numbers"].shape[0] == root["frac_coords"].shape[0]
    )
    if not shapes_ok:
        raise StoreError(f"{path} is truncated (array lengths disagree with n_rows={n_rows}): {_incomplete_hint(path)}")
    if n_rows and (int(root["offsets"][-1]) != root["tokens"].shape[0]
                   or int(root["site_offsets"][-1]) != root["numbers"].shape[0]):
        raise StoreError(f"{path} is truncated (offsets do not reach the end of the data): {_incomplete_hint(path)}")
    if verify:
        digest = content_hash(root)
        if digest != root.attrs.get("content_hash"):
            raise StoreError(f"{path} is damaged (content hash differs from the one recorded at consolidation: chunk "
                             f"files missing or changed): {_incomplete_hint(path)}")
    return root


def _has_array(group: Any, name: str) -> bool:
    # Looked up by name: listing the group would warn about report.json beside the arrays.
    try:
        group[name]
    except KeyError:
        return False
    return True


def content_hash(group: Any) -> str:
    """sha256 over every array of a group, in a fixed order (strings as NUL-joined UTF-8)."""
    h = hashlib.sha256()
    for name in ARRAYS:
        arr = group[name]
        h.update(name.encode())
        step = max(1, arr.chunks[0])
        for start in range(0, arr.shape[0], step):
            _hash_block(h, name, arr[start:start + step])
    return "sha256:" + h.hexdigest()


def _hash_block(h: Any, name: str, block: np.ndarray) -> None:
    if ARRAYS[name][0] == "str":
        h.update("\0".join(str(x) for x in block.tolist()).encode() + b"\1")
    else:
        h.update(np.ascontiguousarray(block, dtype=ARRAYS[name][0]).tobytes())


# --------------------------------------------------------------------------------------------
# Consolidation


@dataclass
class ShardInfo:
    id: str
    manifest: dict[str, Any]


def rank_plan_name(rank: int, world: int) -> str:
    return f"plan.{rank}-of-{world}.json"


def read_plan(store: Path | str) -> list[str] | None:
    """Every shard id of the run: ``plan.json``, else the union of a complete set of per-rank
    plans written by independent tasks (``plan.<rank>-of-<world>.json``); None if neither."""
    shards = Path(store) / "shards"
    plan = shards / PLAN
    if plan.is_file():
        return list(json.loads(plan.read_text())["shards"])
    by_world: dict[int, dict[int, list[str]]] = {}
    for p in shards.glob("plan.*-of-*.json"):
        rank, world = p.name[len("plan."):-len(".json")].split("-of-")
        by_world.setdefault(int(world), {})[int(rank)] = json.loads(p.read_text())["shards"]
    for world, parts in sorted(by_world.items()):
        if len(parts) == world:
            return sorted({sid for ids in parts.values() for sid in ids})
    return None


def finished_shards(store: Path | str) -> list[ShardInfo]:
    """Shards that have a manifest, in id order (readers see only these)."""
    root = Path(store) / "shards"
    out = []
    if root.is_dir():
        for d in sorted(p for p in root.iterdir() if p.is_dir()):
            m = d / MANIFEST
            if m.is_file():
                out.append(ShardInfo(d.name, json.loads(m.read_text())))
    return out


class _Appender:
    """Appends to a root array in whole chunks, so every write is chunk-aligned."""

    def __init__(self, arr: Any) -> None:
        self.arr = arr
        self.chunk = arr.chunks[0]
        self.pos = 0
        self.parts: list[np.ndarray] = []
        self.pending = 0

    def add(self, data: np.ndarray) -> None:
        if len(data):
            self.parts.append(data)
            self.pending += len(data)
            if self.pending >= self.chunk:
                self.flush(final=False)

    def flush(self, final: bool) -> None:
        if not self.parts:
            return
        data = np.concatenate(self.parts) if len(self.parts) > 1 else self.parts[0]
        n = len(data) if final else (len(data) // self.chunk) * self.chunk
        if n:
            self.arr[self.pos:self.pos + n] = data[:n]
            self.pos += n
        rest = data[n:]
        self.parts = [rest] if len(rest) else []
        self.pending = len(rest)


def consolidate(store: Path | str) -> dict[str, Any]:
    """Build the top-level view from the finished shards; idempotent.

    Refuses (StoreError) while a planned shard is unfinished. Rows keep shard-id order; a row
    whose id already appeared in an earlier row is left out of the view and listed in the
    returned ``duplicates``.
    """
    import zarr

    path = Path(store)
    root = _open_root(path, "r+")
    plan = read_plan(path)
    if plan is None:
        raise StoreError(f"{path} has no shard plan (prepare stopped before reading all inputs): rerun the same "
                         f"`matra-hpc data prepare ... --out {path}` (finished shards are kept)")
    missing = [s for s in plan if not shard_done(path, s)]
    if missing:
        raise StoreError(f"{path}: {len(missing)} of {len(plan)} shards are unfinished (first: {missing[0]}): rerun the "
                         f"same `matra-hpc data prepare ... --out {path}` (finished shards are kept)")
    # Mark the view incomplete before touching it, so a killed consolidate is never read as done.
    root.attrs.update({"consolidated": None})
    shard_groups = [zarr.open_group(str(shard_dir(path, s)), mode="r") for s in plan]
    keep, duplicates = _first_occurrences(shard_groups)
    appenders = _create_view_arrays(root, shard_groups, keep)
    split_counts = _append_shards(appenders, shard_groups, keep)
    attrs = {
        "n_rows": int(sum(int(mask.sum()) for mask in keep)),
        "split_counts": split_counts,
        "shards": plan,
        "content_hash": content_hash(root),
    }
    root.attrs.update(attrs)
    root.attrs.update({"consolidated": True})
    return {**attrs, "duplicates": duplicates}


def _first_occurrences(shard_groups: list[Any]) -> tuple[list[np.ndarray], list[str]]:
    """Per shard, a mask of the rows whose id has not appeared before; and the dropped ids."""
    seen: set[str] = set()
    keep: list[np.ndarray] = []
    duplicates: list[str] = []
    for g in shard_groups:
        ids = g["id"][...].tolist() if g["id"].shape[0] else []
        mask = np.ones(len(ids), dtype=bool)
        for i, rid in enumerate(ids):
            if rid in seen:
                mask[i] = False
                duplicates.append(rid)
            else:
                seen.add(rid)
        keep.append(mask)
    return keep, duplicates


def _create_view_arrays(root: Any, shard_groups: list[Any], keep: list[np.ndarray]) -> dict[str, _Appender]:
    """The view's arrays, sized for the kept rows (rewritten whole: the view is rebuilt each time)."""
    sizes = {"row": 0, "token": 0, "site": 0}
    for g, mask in zip(shard_groups, keep, strict=True):
        off = g["offsets"][...]
        soff = g["site_offsets"][...]
        sizes["row"] += int(mask.sum())
        sizes["token"] += int(np.sum((off[1:] - off[:-1])[mask]))
        sizes["site"] += int(np.sum((soff[1:] - soff[:-1])[mask]))
    n_rows = sizes["row"]
    lengths = {"row": n_rows, "token": sizes["token"], "site": sizes["site"], "offset": n_rows + 1,
               "site_offset": n_rows + 1}
    appenders: dict[str, _Appender] = {}
    for name, (dtype, axis, trailing) in ARRAYS.items():
        n = lengths[axis]
        arr = root.create_array(name, shape=(n, *trailing), dtype=str if dtype == "str" else dtype,
                                chunks=(max(1, min(_ROOT_CHUNKS[axis], n)), *trailing), overwrite=True)
        appenders[name] = _Appender(arr)
    return appenders


def _append_shards(appenders: dict[str, _Appender], shard_groups: list[Any], keep: list[np.ndarray]) -> dict[str, int]:
    """Copy the kept rows of every shard into the view, offsets rebased; returns the split counts."""
    split_counts: dict[str, int] = {"train": 0, "val": 0}
    token_base = site_base = 0
    appenders["offsets"].add(np.zeros(1, dtype=np.int64))
    appenders["site_offsets"].add(np.zeros(1, dtype=np.int64))
    for g, mask in zip(shard_groups, keep, strict=True):
        if not len(mask):
            continue
        off = g["offsets"][...]
        soff = g["site_offsets"][...]
        tok, val = g["tokens"][...], g["values"][...]
        frac, num = g["frac_coords"][...], g["numbers"][...]
        tok_sel, site_sel = _selection(off, mask), _selection(soff, mask)
        appenders["tokens"].add(tok[tok_sel])
        appenders["values"].add(val[tok_sel])
        appenders["frac_coords"].add(frac[site_sel].reshape(-1, 3))
        appenders["numbers"].add(num[site_sel])
        row_tok = (off[1:] - off[:-1])[mask]
        row_site = (soff[1:] - soff[:-1])[mask]
        appenders["offsets"].add(token_base + np.cumsum(row_tok).astype(np.int64))
        appenders["site_offsets"].add(site_base + np.cumsum(row_site).astype(np.int64))
        token_base += int(row_tok.sum())
        site_base += int(row_site.sum())
        for name, (_, axis, _) in ARRAYS.items():
            if axis == "row":
                appenders[name].add(g[name][...][mask])
        for s in g["split"][...][mask].tolist():
            split_counts[s] = split_counts.get(s, 0) + 1
    for a in appenders.values():
        a.flush(final=True)
    return split_counts


def _selection(offsets: np.ndarray, mask: np.ndarray) -> Any:
    """Flat indices of the kept rows' elements (everything when no row is dropped)."""
    if mask.all():
        return slice(None)
    rows = np.nonzero(mask)[0]
    if not len(rows):
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.arange(offsets[r], offsets[r + 1]) for r in rows])


def iter_rows(group: Any) -> Iterator[dict[str, Any]]:
    """Rows of a (small) store or shard as dicts; for tests and reports, not for training."""
    cols = {n: group[n][...] for n in ARRAYS}
    n = cols["id"].shape[0]
    for r in range(n):
        a, b = cols["offsets"][r], cols["offsets"][r + 1]
        sa, sb = cols["site_offsets"][r], cols["site_offsets"][r + 1]
        row = {name: cols[name][r] for name, (_, axis, _) in ARRAYS.items() if axis == "row"}
        row.update(tokens=cols["tokens"][a:b], values=cols["values"][a:b], frac_coords=cols["frac_coords"][sa:sb],
                   numbers=cols["numbers"][sa:sb])
        yield row
