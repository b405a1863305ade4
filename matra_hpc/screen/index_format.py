"""On-disk format and keys of the novelty index (docs/contracts.md section K).

An index is a folder::

    ref.index/index.json            written last: schema, key scheme, parts, partitions, sources
    ref.index/build.json            the build plan (sources and their work units), written first
    ref.index/parts/<unit>/         one work unit's entries (ids, structures, keys), manifest.json last
    ref.index/tables/<table>-<p>.keys.npy     uint64, sorted: the keys of partition p
    ref.index/tables/<table>-<p>.entries.npy  int64: the global entry number of each key

Two tables: ``proto`` (prototype hash + reduced formula) and ``formula`` (reduced formula only,
for crystals whose symmetry changed). A key is 64 bits of blake2b over its text, so a table is a
plain sorted ``uint64`` array that numpy memory-maps and ``searchsorted`` reads. A partition owns
a range of the top bits of the key, so one lookup opens one partition. Entry numbers are global:
part ``k`` holds entries ``base_k .. base_k + n_k - 1`` in plan order.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from matra_hpc.util import write_json_atomic

SCHEMA = "matra-hpc/novelty-index/1"
INDEX_FILE = "index.json"
BUILD_FILE = "build.json"
MANIFEST = "manifest.json"
TABLES = ("proto", "formula")
# Average partition size the merge aims at: a partition's two arrays stay near 128 MB.
PARTITION_TARGET = 1 << 23
# The key 0 marks "no prototype hash" in a part's per-entry arrays; a real key of 0 (chance
# 2^-64) moves to 1, which only merges it into one more bucket that StructureMatcher sorts out.
NO_KEY = np.uint64(0)

PART_ARRAYS = ("ids_offsets", "lattice", "frac", "numbers", "site_offsets", "proto_keys", "formula_keys")


def text_key(text: str) -> int:
    """64-bit key of a text (blake2b); never 0."""
    value = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
    return value or 1


def formula_text(numbers: Iterable[int]) -> str:
    """Reduced formula as text of atomic numbers, e.g. ``11:1.17:1`` for NaCl (any cell, any order)."""
    z, counts = np.unique(np.asarray(list(numbers) if not isinstance(numbers, np.ndarray) else numbers,
                                     dtype=np.int64), return_counts=True)
    if not len(z):
        return ""
    g = math.gcd(*(int(c) for c in counts))
    return ".".join(f"{int(a)}:{int(c) // g}" for a, c in zip(z, counts, strict=True))


def formula_key(numbers: Iterable[int]) -> int:
    return text_key("F|" + formula_text(numbers))


def proto_key(prototype_hash: str, numbers: Iterable[int]) -> int:
    """Key of (prototype hash, reduced formula). The hash already fixes the composition; the
    formula is part of the key so that the two tables never depend on what a hash version covers."""
    return text_key(f"P|{prototype_hash}|{formula_text(numbers)}")


def hash_version(prototype_hash: str) -> str:
    return prototype_hash.split(":", 1)[0] if ":" in prototype_hash else ""


def partition_bits(n_entries: int, target: int = PARTITION_TARGET) -> int:
    """log2 of the number of partitions for an index of this size (0: one partition)."""
    if n_entries <= target:
        return 0
    return min(16, math.ceil(math.log2(n_entries / target)))


def partition_of(keys: np.ndarray | int, bits: int) -> np.ndarray | int:
    if bits == 0:
        return np.zeros(len(keys), dtype=np.int64) if isinstance(keys, np.ndarray) else 0
    if isinstance(keys, np.ndarray):
        return (keys >> np.uint64(64 - bits)).astype(np.int64)
    return int(keys) >> (64 - bits)


def partition_range(p: int, bits: int) -> tuple[int, int | None]:
    """[lo, hi) of the keys partition p owns; hi None means up to 2^64 - 1 inclusive."""
    if bits == 0:
        return 0, None
    lo = p << (64 - bits)
    hi = (p + 1) << (64 - bits)
    return lo, (hi if hi < (1 << 64) else None)


def table_paths(root: Path, table: str, p: int) -> tuple[Path, Path]:
    base = root / "tables"
    return base / f"{table}-{p:05d}.keys.npy", base / f"{table}-{p:05d}.entries.npy"


def part_dir(root: Path, unit: str) -> Path:
    return root / "parts" / unit


def part_done(root: Path, unit: str) -> bool:
    return (part_dir(root, unit) / MANIFEST).is_file()


def save_npy_atomic(path: Path, data: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp.npy")
    np.save(tmp, data)
    os.replace(tmp, path)


def write_part(root: Path, unit: str, arrays: dict[str, np.ndarray], ids_blob: bytes, manifest: dict) -> None:
    """Write one unit's entries in a private folder, its manifest last, then rename it into place."""
    final = part_dir(root, unit)
    partial = final.with_name(f".partial-{unit}-{uuid.uuid4().hex}")
    partial.mkdir(parents=True)
    for name in PART_ARRAYS:
        np.save(partial / f"{name}.npy", arrays[name])
    (partial / "ids.bin").write_bytes(ids_blob)
    # Sorted runs of both tables, so the merge reads only the slice of each part it needs.
    for table in TABLES:
        keys = arrays[f"{table}_keys"]
        rows = np.nonzero(keys != NO_KEY)[0]
        order = rows[np.argsort(keys[rows], kind="stable")]
        np.save(partial / f"{table}_sorted.npy", keys[order])
        np.save(partial / f"{table}_order.npy", order.astype(np.int64))
    write_json_atomic(partial / MANIFEST, manifest)
    if final.exists():  # a folder left by a killed writer (no manifest), or an equal copy
        if (final / MANIFEST).is_file():
            shutil.rmtree(partial, ignore_errors=True)
            return
        shutil.rmtree(final, ignore_errors=True)
    try:
        os.rename(partial, final)
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)  # another writer finished the same unit first


def remove_partials(root: Path) -> None:
    """Folders that killed writers left in ``parts/`` (called once every part is done)."""
    for d in (root / "parts").glob(".partial-*"):
        shutil.rmtree(d, ignore_errors=True)


def read_manifest(root: Path, unit: str) -> dict:
    return json.loads((part_dir(root, unit) / MANIFEST).read_text())


def merge_partition(root: Path, units: list[str], bases: list[int], table: str, p: int, bits: int) -> int:
    """Merge every part's sorted run of ``table`` that falls into partition p; returns its size."""
    lo, hi = partition_range(p, bits)
    keys_parts, entry_parts = [], []
    for unit, base in zip(units, bases, strict=True):
        d = part_dir(root, unit)
        keys = np.load(d / f"{table}_sorted.npy", mmap_mode="r")
        if not len(keys):
            continue
        a = int(np.searchsorted(keys, np.uint64(lo), side="left"))
        b = len(keys) if hi is None else int(np.searchsorted(keys, np.uint64(hi), side="left"))
        if b > a:
            order = np.load(d / f"{table}_order.npy", mmap_mode="r")
            keys_parts.append(np.asarray(keys[a:b]))
            entry_parts.append(np.asarray(order[a:b]) + base)
    if keys_parts:
        keys = np.concatenate(keys_parts)
        entries = np.concatenate(entry_parts)
        # Stable: equal keys keep plan order, so a bucket lists its entries oldest source first.
        order = np.argsort(keys, kind="stable")
        keys, entries = keys[order], entries[order]
    else:
        keys, entries = np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
    kpath, epath = table_paths(root, table, p)
    kpath.parent.mkdir(parents=True, exist_ok=True)
    save_npy_atomic(epath, entries.astype(np.int64))
    save_npy_atomic(kpath, keys.astype(np.uint64))
    return len(keys)
