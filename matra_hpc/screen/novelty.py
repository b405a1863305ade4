"""Novelty and uniqueness of crystals: a sharded, memory-mapped index of known structures.

``build_index(sources, out, ctx=ctx)`` turns token stores, generated and screened stores and
folders of structure files into an index folder (format in ``index_format.py`` and
docs/contracts.md section K). Every entry has two keys: (prototype hash, reduced formula) and the
reduced formula alone. ``NoveltyIndex.find(structure)`` looks in the prototype bucket first, then
in the formula bucket, and lets pymatgen's ``StructureMatcher`` decide inside a bucket: a known
crystal that lost symmetry in a relaxation changes its prototype hash but not its formula, so it
is still found. ``RunUniqueness`` applies the same two keys to the candidates of one run.

Building is split in work units (slices of the sources) spread over ranks (``ctx.rank`` of
``ctx.world_size``): each unit becomes a part, written aside and renamed into place with its
manifest last, so a killed build resumes. Once every part exists the sorted key tables are
merged per partition (over MPI ranks when ``ctx.comm`` is set; else by the last array task to
finish), and ``index.json`` is written last.
"""

from __future__ import annotations

import json
import logging
import os
import time
from array import array
from collections import OrderedDict, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from matra_hpc.context import RunContext, local_context
from matra_hpc.errors import StoreError, UsageError
from matra_hpc.screen import index_format as fmt
from matra_hpc.screen.index_sources import (
    STORE_ROWS_PER_UNIT,
    Rows,
    Source,
    Unit,
    describe_source,
    plan_json,
    plan_units,
    read_unit,
    structure_hash,
)

__all__ = ["IndexBuildConfig", "NoveltyIndex", "RunUniqueness", "build_index", "run_index_build", "structure_keys"]

log = logging.getLogger(__name__)
_EMPTY = np.zeros(0, dtype=np.int64)
MAX_OPEN_PARTS = 64


def default_matcher():
    """pymatgen defaults (ltol 0.2, stol 0.3, angle_tol 5, primitive cells, scaled volumes)."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    return StructureMatcher()


def reduced_size(structure) -> int:
    """Sites of the cell StructureMatcher compares (Niggli, then primitive, as it reduces)."""
    return len(structure.get_reduced_structure(reduction_algo="niggli").get_primitive_structure())


class Confirm:
    """StructureMatcher's verdict inside a bucket, with one retry for a lost centring.

    A distortion that breaks a centring (noise of ~0.05-0.1 A on an F- or I-centred crystal)
    leaves a primitive cell 2-4 times the known one's, and StructureMatcher (without
    ``attempt_supercell``) then refuses on the site count alone. When the reduced cells differ
    by a factor 2, 3 or 4, the same tolerances are tried once more with ``attempt_supercell``,
    so such a structure is still the known crystal. ``supercell_retry=False`` gives pymatgen's
    plain verdict.
    """

    def __init__(self, matcher=None, supercell_retry: bool = True) -> None:
        self._matcher = matcher
        self._retry = None
        self.supercell_retry = supercell_retry
        self.retries = 0

    @property
    def matcher(self):
        if self._matcher is None:  # pymatgen loads only when a lookup needs the matcher
            self._matcher = default_matcher()
        return self._matcher

    def _retry_matcher(self):
        if self._retry is None:
            from pymatgen.analysis.structure_matcher import StructureMatcher

            self._retry = StructureMatcher.from_dict({**self.matcher.as_dict(), "attempt_supercell": True})
        return self._retry

    def same(self, query, ref, sizes: dict[Any, int], query_key: Any, ref_key: Any) -> bool:
        """Whether ``query`` is the crystal ``ref``; ``sizes`` memoises reduced cell sizes by key."""
        if self.matcher.fit(query, ref):
            return True
        if not self.supercell_retry:
            return False
        if query_key not in sizes:
            sizes[query_key] = reduced_size(query)
        if ref_key not in sizes:
            sizes[ref_key] = reduced_size(ref)
        a, b = sizes[query_key], sizes[ref_key]
        # Centrings multiply a primitive cell by 2 (A, B, C, I), 3 (R) or 4 (F): other ratios are
        # other crystals, and the supercell search is the expensive part of a lookup.
        if max(a, b) % min(a, b) or max(a, b) // min(a, b) not in (2, 3, 4):
            return False
        self.retries += 1
        return bool(self._retry_matcher().fit(query, ref))


def _numbers(structure) -> np.ndarray:
    return np.array([sp.Z for sp in structure.species], dtype=np.int64)


def structure_keys(structure, prototype_hash: str | None = None) -> tuple[int | None, int]:
    """(prototype key or None, formula key) of a structure; the hash is computed when not given."""
    numbers = _numbers(structure)
    h = prototype_hash if prototype_hash else structure_hash(structure)
    return (fmt.proto_key(h, numbers) if h else None), fmt.formula_key(numbers)


# --------------------------------------------------------------------------------------------
# Building


def _created_by() -> dict[str, Any]:
    from matra_hpc import __version__
    from matra_hpc.util import git_revision

    return {"package": __version__, "git": git_revision()}


def _part_arrays(rows: Rows) -> tuple[dict[str, np.ndarray], bytes]:
    n = len(rows.ids)
    id_bytes = [s.encode() for s in rows.ids]
    ids_offsets = np.zeros(n + 1, dtype=np.int64)
    ids_offsets[1:] = np.cumsum([len(b) for b in id_bytes]) if n else []
    site_offsets = np.zeros(n + 1, dtype=np.int64)
    site_offsets[1:] = np.cumsum([len(z) for z in rows.numbers]) if n else []
    proto = np.full(n, fmt.NO_KEY, dtype=np.uint64)
    formula = np.zeros(n, dtype=np.uint64)
    for r, (h, z) in enumerate(zip(rows.hashes, rows.numbers, strict=True)):
        formula[r] = fmt.formula_key(z)
        if h:
            proto[r] = fmt.proto_key(h, z)
    arrays = {
        "ids_offsets": ids_offsets,
        "lattice": np.asarray(rows.lattices, dtype=np.float64).reshape(n, 3, 3),
        # float32 fractions: 1e-7 of a cell is far below StructureMatcher's tolerances.
        "frac": (np.concatenate(rows.fracs) if n else np.zeros((0, 3))).astype(np.float32),
        "numbers": (np.concatenate(rows.numbers) if n else np.zeros(0)).astype(np.uint8),
        "site_offsets": site_offsets,
        "proto_keys": proto,
        "formula_keys": formula,
    }
    return arrays, b"".join(id_bytes)


def _build_unit(root: Path, source: Source, unit: Unit, rank: int) -> dict[str, Any]:
    rows = read_unit(source, unit)
    arrays, blob = _part_arrays(rows)
    manifest = {
        "unit": unit.name, "source": source.path, "group": unit.group, "start": unit.start, "stop": unit.stop,
        "n": len(rows.ids), "rank": rank, "n_hashed": int(np.count_nonzero(arrays["proto_keys"])), "skipped": rows.skipped,
    }
    fmt.write_part(root, unit.name, arrays, blob, manifest)
    return manifest


def _check_out(root: Path, plan: dict[str, Any]) -> dict[str, Any] | None:
    """Refuse an --out that holds another build; return the finished summary if this build is done."""
    build = root / fmt.BUILD_FILE
    if root.is_file():
        raise UsageError(f"{root} is a file, not an index folder: pick another --out")
    if root.exists() and not build.is_file() and any(not p.name.startswith(".") for p in root.iterdir()):
        raise UsageError(f"{root} exists and is not a novelty index build: pick another --out")
    if build.is_file():
        old = json.loads(build.read_text())
        if old.get("plan") != plan:
            raise UsageError(f"{root} holds an index of other sources (or of changed ones): pick another --out, "
                             f"or delete it to rebuild")
        index = root / fmt.INDEX_FILE
        if index.is_file():
            return json.loads(index.read_text())
    return None


def finalize_parts(root: Path, unit_names: list[str], sources: list[dict[str, Any]], plan_sha256: str,
                   partitions: list[int] | None = None, partition_entries: int = fmt.PARTITION_TARGET,
                   ) -> dict[str, Any]:
    """Merge the parts' sorted runs into the partitioned tables and return the ``index.json``
    content (the caller writes it, last). ``partitions``: the ones this process merges (all when
    None), so MPI ranks share the merge."""
    manifests = [fmt.read_manifest(root, u) for u in unit_names]
    counts = [int(m["n"]) for m in manifests]
    bases = [0, *np.cumsum(counts).tolist()[:-1]] if counts else []
    n_entries = int(sum(counts))
    bits = fmt.partition_bits(n_entries, partition_entries)
    for p in (range(1 << bits) if partitions is None else partitions):
        for table in fmt.TABLES:
            fmt.merge_partition(root, unit_names, bases, table, p, bits)
    skipped: dict[str, int] = defaultdict(int)
    for m in manifests:
        for k, v in m.get("skipped", {}).items():
            skipped[k] += int(v)
    return {
        "schema": fmt.SCHEMA,
        "created_by": _created_by(),
        "hash_version": _hash_version(),
        "key_scheme": "blake2b-64 of 'P|<prototype hash>|<reduced formula>' and 'F|<reduced formula>'",
        "n_entries": n_entries,
        "n_hashed": int(sum(int(m.get("n_hashed", 0)) for m in manifests)),
        "skipped": dict(skipped),
        "partition_bits": bits,
        "parts": [{"unit": u, "n": c, "base": int(b)} for u, c, b in zip(unit_names, counts, bases, strict=True)],
        "sources": sources,
        "plan_sha256": plan_sha256,
    }


def _finalize(root: Path, units: list[Unit], sources: list[Source], plan: dict[str, Any],
              partitions: list[int] | None = None) -> dict[str, Any]:
    meta = [{"path": s.path, "kind": s.kind, "rows": sum(s.groups.values())} for s in sources]
    return finalize_parts(root, [u.name for u in units], meta, _plan_digest(plan), partitions,
                          int(plan["partition_entries"]))


def _hash_version() -> str:
    from matra_hpc.tokens.hashing import HASH_VERSION

    return HASH_VERSION


def _plan_digest(plan: dict[str, Any]) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()


def _summary(index: dict[str, Any], root: Path, seconds: float, built_here: int) -> dict[str, Any]:
    return {
        "out": str(root), "finalized": True, "n_entries": index["n_entries"], "n_hashed": index["n_hashed"],
        "n_parts": len(index["parts"]), "partitions": 1 << index["partition_bits"], "skipped": index["skipped"],
        "hash_version": index["hash_version"], "parts_built_here": built_here, "seconds": round(seconds, 2),
    }


def build_index(sources: list[str], out: str | Path, *, ctx: RunContext | None = None,
                rows_per_unit: int | None = None, partition_entries: int | None = None) -> dict[str, Any]:
    """Build (or resume) a novelty index of ``sources`` in the folder ``out``; returns a summary.

    Every rank computes the same plan from the sources and builds the units ``rank::world_size``.
    An existing finished index of the same sources is returned as is; an ``out`` that holds
    anything else is refused (UsageError), never overwritten.
    """
    ctx = ctx or local_context()
    start = time.perf_counter()
    if not sources:
        raise UsageError("give at least one index source (token, generated or screened store, or a structure folder)")
    root = Path(out).resolve()
    described = [describe_source(s) for s in sources]
    for src in described:
        if src.kind != "dataset" and (root == Path(src.path) or Path(src.path) in root.parents):
            raise UsageError(f"--out {root} lies inside the source {src.path}: pick a folder outside it")
    kwargs = {} if rows_per_unit is None else {"rows_per_unit": rows_per_unit}
    units = plan_units(described, **kwargs)
    plan = plan_json(described, units)
    plan["hash_version"] = _hash_version()
    plan["partition_entries"] = int(partition_entries or fmt.PARTITION_TARGET)
    done = _check_out(root, plan)
    if done is not None:
        return _summary(done, root, time.perf_counter() - start, 0)
    root.mkdir(parents=True, exist_ok=True)
    fmt.write_json_atomic(root / fmt.BUILD_FILE, {"plan": plan})  # same content from every rank
    (root / "parts").mkdir(exist_ok=True)

    built = 0
    all_done_at_start = all(fmt.part_done(root, u.name) for u in units)
    mpi = ctx.comm is not None and ctx.world_size > 1
    error: str | None = None
    try:
        for unit in units[ctx.rank::max(1, ctx.world_size)]:
            if fmt.part_done(root, unit.name):
                continue
            m = _build_unit(root, described[unit.source], unit, ctx.rank)
            built += 1
            log.info("index part %s: %d entries (%d hashed)", unit.name, m["n"], m["n_hashed"])
    except Exception as exc:
        if not mpi:
            raise
        error = f"rank {ctx.rank}: {type(exc).__name__}: {exc}"

    if mpi:
        # Every rank learns about a failed one (instead of waiting for it at a barrier forever).
        errors = [e for e in ctx.comm.allgather(error) if e]
        if errors:
            raise StoreError(f"index build failed ({'; '.join(errors)}); finished parts are kept, rerun to resume")
        n_total = sum(int(fmt.read_manifest(root, u.name)["n"]) for u in units)
        parts = list(range(1 << fmt.partition_bits(n_total, plan["partition_entries"])))[ctx.rank::ctx.world_size]
        index = _finalize(root, units, described, plan, partitions=parts)
        ctx.comm.Barrier()
        if ctx.rank == 0:
            fmt.remove_partials(root)
            fmt.write_json_atomic(root / fmt.INDEX_FILE, index)
        ctx.comm.Barrier()
        return _summary(index, root, time.perf_counter() - start, built)

    if ctx.world_size > 1:
        # Independent array tasks: the last one to finish its units merges. Whoever wrote last
        # sees every part; if two see them at once, the O_EXCL claim picks one. A task that found
        # every part already there (a rerun after the merging task died) merges too: merges write
        # identical files atomically, so a second one only costs time.
        not_done = {"out": str(root), "finalized": False, "parts_built_here": built,
                    "seconds": round(time.perf_counter() - start, 2)}
        if not all(fmt.part_done(root, u.name) for u in units):
            return not_done
        if not all_done_at_start:
            try:
                fd = os.open(root / ".finalize-claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                os.close(fd)
            except FileExistsError:
                return not_done
    index = _finalize(root, units, described, plan)
    fmt.remove_partials(root)
    fmt.write_json_atomic(root / fmt.INDEX_FILE, index)
    return _summary(index, root, time.perf_counter() - start, built)


@dataclass
class IndexBuildConfig:
    """``matra-hpc index build`` (and ``submit index-build``): the sources and the index folder."""

    sources: tuple[str, ...] = ()
    out: str = "ref.index"
    rows_per_unit: int = STORE_ROWS_PER_UNIT
    """Store rows per work unit (a part); folders go 256 files per unit."""
    partition_entries: int = fmt.PARTITION_TARGET
    """Entries a table partition aims at (partitions are a power of two, merged in parallel)."""

    def validate(self) -> None:
        if not self.sources:
            raise UsageError("give at least one index source (token, generated or screened store, or a "
                             "structure folder)")
        if self.rows_per_unit < 1:
            raise UsageError(f"--rows-per-unit must be >= 1, got {self.rows_per_unit}")
        if self.partition_entries < 1:
            raise UsageError(f"--partition-entries must be >= 1, got {self.partition_entries}")
        for s in self.sources:
            if not Path(s).exists():
                raise UsageError(f"index source {s} does not exist")


def run_index_build(config: IndexBuildConfig, ctx: RunContext | None = None) -> dict[str, Any]:
    """Stage entry (``module:function`` for the launch layer)."""
    config.validate()
    return build_index(list(config.sources), config.out, ctx=ctx, rows_per_unit=config.rows_per_unit,
                       partition_entries=config.partition_entries)


# --------------------------------------------------------------------------------------------
# Reading


def _check_files(root: Path, meta: dict[str, Any]) -> None:
    """Refuse an index whose tables or parts are missing or cut (reads only the .npy headers)."""
    want = {"proto": int(meta["n_hashed"]), "formula": int(meta["n_entries"])}
    try:
        for table, n in want.items():
            total = 0
            for p in range(1 << int(meta["partition_bits"])):
                kpath, epath = fmt.table_paths(root, table, p)
                keys, entries = np.load(kpath, mmap_mode="r"), np.load(epath, mmap_mode="r")
                if keys.shape != entries.shape:
                    raise ValueError(f"{kpath.name} and {epath.name} differ in length")
                total += len(keys)
            if total != n:
                raise ValueError(f"table {table} holds {total} keys, index.json says {n}")
        for part in meta["parts"]:
            if not (fmt.part_dir(root, part["unit"]) / fmt.MANIFEST).is_file():
                raise ValueError(f"part {part['unit']} is missing")
    except (OSError, ValueError) as exc:
        raise StoreError(f"{root} is damaged ({exc}): rebuild it with `matra-hpc index build` into a new --out") \
            from None


class NoveltyIndex:
    """A finished index, memory-mapped: key lookups in sorted arrays, structures read on demand."""

    def __init__(self, root: Path, meta: dict[str, Any], matcher=None, cache_size: int = 4096,
                 supercell_retry: bool = True) -> None:
        self.root = root
        self.meta = meta
        self.bits = int(meta["partition_bits"])
        self._shift = 64 - self.bits
        self.confirm = Confirm(matcher, supercell_retry)
        self._sizes: OrderedDict[Any, int] = OrderedDict()
        self._tables: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
        # Open parts, least recently used out: each map holds a file descriptor, and an index of
        # 10^8 entries has ~1,500 parts of 10 arrays.
        self._parts: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self._bases = np.array([p["base"] for p in meta["parts"]], dtype=np.int64)
        self._units = [p["unit"] for p in meta["parts"]]
        self._cache: OrderedDict[int, Any] = OrderedDict()
        self._cache_size = cache_size
        self.stats = {"lookups": 0, "proto_hits": 0, "formula_hits": 0, "fits": 0}

    @property
    def matcher(self):
        return self.confirm.matcher

    @classmethod
    def open(cls, path: str | Path, matcher=None, supercell_retry: bool = True) -> NoveltyIndex:
        root = Path(path)
        index = root / fmt.INDEX_FILE
        if not index.is_file():
            if (root / fmt.BUILD_FILE).is_file():
                raise StoreError(f"{root} is an unfinished index: rerun the same `matra-hpc index build ... --out "
                                 f"{root}` (finished parts are kept)")
            raise StoreError(f"{root} is not a novelty index (no {fmt.INDEX_FILE}): build one with "
                             f"`matra-hpc index build SOURCES --out {root}`")
        try:
            meta = json.loads(index.read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(f"{root}/{fmt.INDEX_FILE} is unreadable ({type(exc).__name__}): rebuild the index") from None
        if meta.get("schema") != fmt.SCHEMA:
            raise StoreError(f"{root} has schema {meta.get('schema')!r}, expected {fmt.SCHEMA!r}")
        current = _hash_version()
        if meta.get("hash_version") != current:
            raise StoreError(f"{root} was built with prototype hash {meta.get('hash_version')}, this code computes "
                             f"{current}: rebuild it with `matra-hpc index build` into a new --out")
        _check_files(root, meta)
        return cls(root, meta, matcher, supercell_retry=supercell_retry)

    def __len__(self) -> int:
        return int(self.meta["n_entries"])

    # ---- keys

    def _table(self, table: str, p: int) -> tuple[np.ndarray, np.ndarray]:
        got = self._tables.get((table, p))
        if got is None:
            kpath, epath = fmt.table_paths(self.root, table, p)
            # Plain ndarray views of the maps: np.memmap's subclass hooks cost more than the search.
            got = (np.load(kpath, mmap_mode="r").view(np.ndarray), np.load(epath, mmap_mode="r").view(np.ndarray))
            self._tables[(table, p)] = got
        return got

    def bucket(self, key: int, table: str = "proto") -> np.ndarray:
        """Global entry numbers whose ``table`` key equals ``key`` (oldest source first)."""
        p = key >> self._shift if self.bits else 0
        got = self._tables.get((table, p))
        keys, entries = got if got is not None else self._table(table, p)
        k = np.uint64(key)  # a Python int above 2^63 would make searchsorted convert the whole array
        a = keys.searchsorted(k)
        if a == len(keys) or keys[a] != k:
            return _EMPTY
        return entries[a:keys.searchsorted(k, side="right")]

    def count_keys(self, keys: np.ndarray, table: str = "proto") -> np.ndarray:
        """Bucket size of each key (vectorised; what a batch of lookups costs without the matcher)."""
        keys = np.asarray(keys, dtype=np.uint64)
        # Sorted queries walk each table once, in order: ~10x faster than random probes.
        order = np.argsort(keys, kind="stable")
        sk = keys[order]
        parts = fmt.partition_of(sk, self.bits)
        bounds = np.searchsorted(parts, np.arange((1 << self.bits) + 1))
        counts = np.zeros(len(keys), dtype=np.int64)
        for p in range(1 << self.bits):
            a, b = int(bounds[p]), int(bounds[p + 1])
            if b > a:
                tk, _ = self._table(table, p)
                counts[a:b] = tk.searchsorted(sk[a:b], side="right") - tk.searchsorted(sk[a:b], side="left")
        out = np.empty_like(counts)
        out[order] = counts
        return out

    # ---- entries

    def _part(self, k: int) -> dict[str, np.ndarray]:
        got = self._parts.get(k)
        if got is not None:
            self._parts.move_to_end(k)
        else:
            d = fmt.part_dir(self.root, self._units[k])
            got = {name: np.load(d / f"{name}.npy", mmap_mode="r")
                   for name in ("ids_offsets", "lattice", "frac", "numbers", "site_offsets")}
            got["ids"] = np.memmap(d / "ids.bin", dtype=np.uint8, mode="r") if (d / "ids.bin").stat().st_size \
                else np.zeros(0, dtype=np.uint8)
            self._parts[k] = got
            if len(self._parts) > MAX_OPEN_PARTS:
                self._parts.popitem(last=False)
        return got

    def _locate(self, entry: int) -> tuple[dict[str, np.ndarray], int]:
        if not 0 <= entry < len(self):
            raise IndexError(f"entry {entry} outside 0..{len(self) - 1}")
        k = int(np.searchsorted(self._bases, entry, side="right")) - 1
        # Empty parts share their base with the next one: step to the part that holds the row.
        while int(self.meta["parts"][k]["n"]) <= entry - int(self._bases[k]):
            k += 1
        return self._part(k), entry - int(self._bases[k])

    def entry_id(self, entry: int) -> str:
        part, r = self._locate(entry)
        a, b = int(part["ids_offsets"][r]), int(part["ids_offsets"][r + 1])
        return bytes(part["ids"][a:b]).decode()

    def structure(self, entry: int):
        """The stored structure of an entry (cached, least recently used out)."""
        got = self._cache.get(entry)
        if got is not None:
            self._cache.move_to_end(entry)
            return got
        from pymatgen.core import Lattice, Structure

        part, r = self._locate(entry)
        a, b = int(part["site_offsets"][r]), int(part["site_offsets"][r + 1])
        got = Structure(Lattice(np.asarray(part["lattice"][r])), [int(z) for z in part["numbers"][a:b]],
                        np.asarray(part["frac"][a:b], dtype=np.float64))
        self._cache[entry] = got
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return got

    # ---- lookups

    def find(self, structure, *, prototype_hash: str | None = None) -> str | None:
        """Id of a known crystal that ``structure`` matches, else None.

        ``prototype_hash``: the structure's current hash when the caller already has it (saves
        an encode); otherwise it is computed, unless no known crystal has the structure's
        reduced formula (then it is novel at once). The prototype bucket is searched first, then
        the rest of the formula bucket, so a hash changed by lost symmetry still finds the crystal.
        """
        self.stats["lookups"] += 1
        numbers = _numbers(structure)
        family = self.bucket(fmt.formula_key(numbers), "formula")
        if not len(family):
            return None  # no known crystal has this formula: no hash (an encode) needed
        h = prototype_hash or structure_hash(structure)
        pkey = fmt.proto_key(h, numbers) if h else None
        tried: set[int] = set()
        sizes = self._sizes
        sizes.pop("query", None)
        if pkey is not None:
            for e in self.bucket(pkey, "proto").tolist():
                tried.add(e)
                self.stats["fits"] += 1
                if self.confirm.same(structure, self.structure(e), sizes, "query", e):
                    self.stats["proto_hits"] += 1
                    return self.entry_id(e)
        for e in family.tolist():
            if e in tried:
                continue
            self.stats["fits"] += 1
            if self.confirm.same(structure, self.structure(e), sizes, "query", e):
                self.stats["formula_hits"] += 1
                return self.entry_id(e)
        while len(sizes) > self._cache_size:  # reduced sizes of entries, oldest out
            sizes.popitem(last=False)
        return None


class RunUniqueness:
    """Candidates of one run seen so far, under the index's two keys (in memory).

    Call ``first_seen`` in the run's fixed order (temperature, shard, row): the first of a set of
    matching candidates is unique, each later one gets that first one's id. Only unique
    candidates are kept, as flat arrays (~100 + 13 x sites bytes each; a pymatgen Structure
    costs ~1 kB per site), so a run of millions fits; structures are rebuilt on demand.
    """

    def __init__(self, matcher=None, supercell_retry: bool = True, cache_size: int = 4096) -> None:
        self.confirm = Confirm(matcher, supercell_retry)
        self._sizes: dict[Any, int] = {}
        self._proto: dict[int, list[int]] = defaultdict(list)
        self._formula: dict[int, list[int]] = defaultdict(list)
        self._ids: list[str] = []
        self._lattice = array("d")
        self._frac = array("f")
        self._numbers = array("B")
        self._offsets = array("q", [0])
        self._cache: OrderedDict[int, Any] = OrderedDict()
        self._cache_size = cache_size

    def __len__(self) -> int:
        return len(self._ids)

    def _structure(self, j: int):
        got = self._cache.get(j)
        if got is not None:
            self._cache.move_to_end(j)
            return got
        from pymatgen.core import Lattice, Structure

        a, b = self._offsets[j], self._offsets[j + 1]
        lattice = np.frombuffer(self._lattice, dtype=np.float64)[9 * j:9 * j + 9].reshape(3, 3).copy()
        frac = np.frombuffer(self._frac, dtype=np.float32)[3 * a:3 * b].reshape(-1, 3).astype(np.float64)
        numbers = np.frombuffer(self._numbers, dtype=np.uint8)[a:b].tolist()
        got = Structure(Lattice(lattice), numbers, frac)
        self._remember(j, got)
        return got

    def _remember(self, j: int, structure) -> None:
        self._cache[j] = structure
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def first_seen(self, candidate_id: str, structure, *, prototype_hash: str | None = None) -> str | None:
        """Id of an earlier candidate this one matches; else None, and it is remembered."""
        numbers = _numbers(structure)
        fkey = fmt.formula_key(numbers)
        family = self._formula.get(fkey, [])
        pkey = None
        i = len(self._ids)  # this candidate's slot if it is new; its size memo key meanwhile
        if family or prototype_hash:
            # The hash only orders the matcher's work, so a first of its formula skips the encode.
            h = prototype_hash or structure_hash(structure)
            pkey = fmt.proto_key(h, numbers) if h else None
        if family:
            self._sizes.pop(i, None)
            same_proto = self._proto.get(pkey, []) if pkey is not None else []
            first = set(same_proto)
            rest = [j for j in family if j not in first]
            for j in [*same_proto, *rest]:
                if self.confirm.same(structure, self._structure(j), self._sizes, i, j):
                    return self._ids[j]
        self._ids.append(candidate_id)
        self._lattice.extend(np.asarray(structure.lattice.matrix, dtype=np.float64).ravel().tolist())
        self._frac.extend(np.asarray(structure.frac_coords, dtype=np.float64).ravel().tolist())
        self._numbers.extend(numbers.tolist())
        self._offsets.append(self._offsets[-1] + len(structure))
        if pkey is not None:
            self._proto[pkey].append(i)
        self._formula[fkey].append(i)
        return None
