"""Duplicate checks: prototype-hash buckets, confirmed by pymatgen's StructureMatcher.

Two structures can only match if they share a prototype hash (same composition, group and
Wyckoff-element assignment of their canonical sequences), so the hash narrows the search to a
bucket and ``StructureMatcher`` (pymatgen defaults: ltol 0.2, stol 0.3, angle_tol 5, on the
primitive cells, scaled volumes) decides within it.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np


def default_matcher():
    from pymatgen.analysis.structure_matcher import StructureMatcher

    return StructureMatcher()


class PrototypeIndex:
    """Structures seen so far, bucketed by prototype hash (in memory)."""

    def __init__(self, matcher=None) -> None:
        self.matcher = matcher or default_matcher()
        self.buckets: dict[str, list] = defaultdict(list)

    def matches(self, key: str, structure) -> bool:
        return any(self.matcher.fit(structure, known) for known in self.buckets.get(key, ()))

    def check_and_add(self, key: str, structure) -> bool:
        """True if an equivalent structure is already in the bucket; otherwise remember this one."""
        if self.matches(key, structure):
            return True
        self.buckets[key].append(structure)
        return False


class TrainingIndex:
    """The known structures of a token store (all rows, train and val), read lazily per bucket.

    The store is opened by the data stage's reader, which refuses foreign, unfinished and
    truncated stores; only the hash column and the site offsets are held in memory.
    """

    def __init__(self, path: str | Path, matcher=None) -> None:
        from matra_hpc.data.store import open_token_store

        self.path = Path(path)
        root = open_token_store(self.path)
        self.vocab_hash = root.attrs.get("vocab_hash")
        self.matcher = matcher or default_matcher()
        hashes = root["prototype_hash"][...]
        self.rows_by_hash: dict[str, list[int]] = defaultdict(list)
        for r, key in enumerate(hashes):
            if key:
                self.rows_by_hash[str(key)].append(r)
        self._lattice = root["lattice"]
        self._frac = root["frac_coords"]
        self._numbers = root["numbers"]
        self._site_offsets = np.asarray(root["site_offsets"][...])
        self._cache: dict[int, object] = {}

    def __len__(self) -> int:
        return len(self._site_offsets) - 1

    def structure(self, row: int):
        if row not in self._cache:
            from pymatgen.core import Lattice, Structure

            a, b = int(self._site_offsets[row]), int(self._site_offsets[row + 1])
            self._cache[row] = Structure(
                Lattice(np.asarray(self._lattice[row])),
                np.asarray(self._numbers[a:b]).astype(int),
                np.asarray(self._frac[a:b]),
            )
        return self._cache[row]

    def is_known(self, key: str, structure) -> bool:
        """Whether a structure with this prototype hash matches a row of the store."""
        if not key:
            return False
        return any(self.matcher.fit(structure, self.structure(r)) for r in self.rows_by_hash.get(key, ()))


def store_fingerprint(path: str | Path) -> str:
    """The token store's content hash (recorded by its consolidation), for the resume check."""
    from matra_hpc.data.store import open_token_store

    return str(open_token_store(path).attrs.get("content_hash"))
