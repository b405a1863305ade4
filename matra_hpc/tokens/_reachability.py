"""Exact, precomputed feasibility of element counts on a space group's Wyckoff positions.

The grammar asks one question over and over: *can these element counts still be placed on the
unused Wyckoff positions of group G with at most B more sites?* Positions with a free parameter
may be repeated (each repetition is one site, its multiplicity in atoms); positions without one
("fixed") may be used once per structure, by one element.

Why the answer is cheap
-----------------------
Two fixed positions with the same multiplicity are interchangeable for this question, so the
unused fixed positions collapse to a vector ``a`` of how many are left per distinct fixed
multiplicity ("class"). Over all groups there are at most 4 classes and at most 27 such vectors
per group (1,377 over the 230 groups), indexed in mixed radix (last class fastest).

Per group we precompute (counts ``c`` up to ``max_count``):

* ``min_free[c]``: fewest free-position sites whose multiplicities sum to ``c`` (unbounded coin
  change over the free multiplicities);
* ``min_sites[c, a]``: fewest sites for one element of count ``c`` using fixed positions within
  ``a`` (``min over u <= a`` of ``|u| + min_free[c - m.u]``), then a running minimum along every
  class axis so the table is monotone in ``a``.

Several elements share the fixed pool but nothing else, and the total site count is additive, so
for a multiset ``R`` of counts the *frontier*
``D_R[a] = min total sites for R using fixed usage <= a`` is a min-plus convolution over the
vector lattice, one element at a time: ``D_{R+c}[a] = min_{b <= a} D_R[a - b] + min_sites[c, b]``.
It is exact (not a heuristic): ``R`` is realisable with the unused pool ``a`` and budget ``B``
iff ``D_R[a] <= B``. Frontiers are memoised per (group, sorted counts); element order never
matters.

Required positions (a condition) add a subset dimension: ``D_R[a, q]`` is the fewest sites when
the required entries in bitmask ``q`` are held by known elements. Fixed required positions are
reserved out of the pool ``a``; entries left over go to elements whose count is not chosen yet.

:class:`ReachTables` also lays all groups side by side in one flat array of "slots" (group
offset + vector index) so the composition block (any group still possible) is answered for all
230 groups and all 512 counts with a handful of vectorised numpy operations.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

INF = 1_000_000  # "impossible"; sums of a few INFs stay far below int64 overflow
_INF16 = 10_000  # "impossible" in the int16 tables; two of them still fit in int16


def _coin_min(mults: Sequence[int], max_count: int) -> np.ndarray:
    """Fewest coins (unbounded) from ``mults`` summing to each value 0..max_count (INF if none)."""
    best = np.full(max_count + 1, INF, dtype=np.int64)
    best[0] = 0
    for value in range(1, max_count + 1):
        for m in mults:
            if m <= value and best[value - m] + 1 < best[value]:
                best[value] = best[value - m] + 1
    return best


@dataclass
class GroupReach:
    """Precomputed tables of one space group; see the module docstring."""

    group: int
    mults: tuple[int, ...]  # per Wyckoff position, letter order
    n_free: tuple[int, ...]
    max_count: int
    class_mults: tuple[int, ...] = field(init=False)
    class_caps: tuple[int, ...] = field(init=False)
    position_class: tuple[int, ...] = field(init=False)  # class of a fixed position, -1 if free
    strides: tuple[int, ...] = field(init=False)
    size: int = field(init=False)
    full: int = field(init=False)
    min_free: np.ndarray = field(init=False, repr=False)
    min_sites: np.ndarray = field(init=False, repr=False)  # (max_count + 1, size)

    def __post_init__(self) -> None:
        fixed = [m for m, nf in zip(self.mults, self.n_free, strict=True) if nf == 0]
        self.class_mults = tuple(sorted(set(fixed)))
        self.class_caps = tuple(fixed.count(m) for m in self.class_mults)
        self.position_class = tuple(
            self.class_mults.index(m) if nf == 0 else -1
            for m, nf in zip(self.mults, self.n_free, strict=True)
        )
        strides, stride = [], 1
        for cap in reversed(self.class_caps):
            strides.append(stride)
            stride *= cap + 1
        self.strides = tuple(reversed(strides))
        self.size = stride
        self.full = sum(c * s for c, s in zip(self.class_caps, self.strides, strict=True))
        # vectors of the lattice in index order, shape (size, n_classes)
        shape = tuple(c + 1 for c in self.class_caps)
        self._vectors = np.array(list(np.ndindex(*shape)), dtype=np.int64).reshape(self.size, -1)
        free_mults = sorted({m for m, nf in zip(self.mults, self.n_free, strict=True) if nf > 0})
        self.min_free = _coin_min(free_mults, self.max_count)
        used_atoms = self._vectors @ np.array(self.class_mults, dtype=np.int64)
        used_sites = self._vectors.sum(axis=1)
        counts = np.arange(self.max_count + 1)[:, None]
        rest = counts - used_atoms[None, :]
        table = np.where(rest >= 0, self.min_free[np.clip(rest, 0, None)] + used_sites[None, :], INF)
        table = np.minimum(table, INF)
        cube = table.reshape((self.max_count + 1, *shape))
        for axis in range(1, cube.ndim):
            cube = np.minimum.accumulate(cube, axis=axis)
        self.min_sites = np.ascontiguousarray(cube.reshape(self.max_count + 1, self.size))
        # pairs (a, b) with b <= a componentwise, grouped by a, for the min-plus convolution
        pa, pb = [], []
        for ia, va in enumerate(self._vectors):
            for ib, vb in enumerate(self._vectors):
                if np.all(vb <= va):
                    pa.append(ia)
                    pb.append(ib)
        self.pair_a = np.array(pa, dtype=np.int64)
        self.pair_b = np.array(pb, dtype=np.int64)
        self.pair_rest = self.pair_a - self.pair_b  # index of a - b (no borrow since b <= a)
        self.pair_starts = np.flatnonzero(np.r_[True, self.pair_a[1:] != self.pair_a[:-1]])
        self._frontiers: dict[tuple[int, ...], np.ndarray] = {(): np.zeros(self.size, dtype=np.int64)}

    # -- pool bookkeeping -------------------------------------------------------------------
    def avail_index(self, used_positions: Sequence[int]) -> int:
        """Index of the unused fixed pool when ``used_positions`` (fixed ones) are taken."""
        index = self.full
        for p in used_positions:
            cls = self.position_class[p]
            if cls >= 0:
                index -= self.strides[cls]
        return index

    def class_count(self, index: int, cls: int) -> int:
        return int(self._vectors[index, cls])

    # -- frontiers --------------------------------------------------------------------------
    def convolve(self, frontier: np.ndarray, count: int) -> np.ndarray:
        vals = frontier[self.pair_rest] + self.min_sites[count, self.pair_b]
        return np.minimum(np.minimum.reduceat(vals, self.pair_starts), INF)

    def frontier(self, counts: tuple[int, ...]) -> np.ndarray:
        """``D_R`` for the sorted tuple of positive counts ``R``; memoised."""
        hit = self._frontiers.get(counts)
        if hit is None:
            hit = self.convolve(self.frontier(counts[:-1]), counts[-1])
            if len(self._frontiers) > 50_000:
                self._frontiers.clear()
                self._frontiers[()] = np.zeros(self.size, dtype=np.int64)
            self._frontiers[counts] = hit
        return hit

    def min_cost(self, counts: Sequence[int], avail: int) -> int:
        """Fewest sites that realise ``counts`` (any order, zeros ignored) from pool ``avail``."""
        key = tuple(sorted(c for c in counts if c > 0))
        if any(c > self.max_count for c in key):
            return INF
        return int(self.frontier(key)[avail])


class RequiredReach:
    """Feasibility in one group when some Wyckoff positions must appear (a condition).

    ``required`` is a tuple of position indices (a multiset; a fixed position at most once).
    Entries not held by the known counts go to elements whose counts are still to be chosen
    (``unknown`` of them, each needing at least one site); with none left they must be empty.
    """

    def __init__(self, reach: GroupReach, required: tuple[int, ...]) -> None:
        self.reach = reach
        self.required = required
        self.n_req = len(required)
        self.n_sub = 1 << self.n_req
        self.sub_atoms = np.array(
            [
                sum(reach.mults[required[i]] for i in range(self.n_req) if s >> i & 1)
                for s in range(self.n_sub)
            ],
            dtype=np.int64,
        )
        self.sub_sites = np.array([bin(s).count("1") for s in range(self.n_sub)], dtype=np.int64)
        # (q, s) pairs with s a subset of q
        self.sub_pairs = [(q, s) for q in range(self.n_sub) for s in range(self.n_sub) if s & q == s]
        self._frontiers: dict[tuple[int, ...], np.ndarray] = {}

    def reserved_avail(self, used_positions: Sequence[int], remaining_required: Sequence[int]) -> int:
        """Unused fixed pool with the still-required fixed positions reserved out of it."""
        return self.reach.avail_index(list(used_positions) + list(remaining_required))

    def _element_table(self, count: int) -> np.ndarray:
        """(size, n_sub): fewest sites for one element of ``count`` holding exactly subset s."""
        r = self.reach
        out = np.full((r.size, self.n_sub), INF, dtype=np.int64)
        for s in range(self.n_sub):
            rest = count - self.sub_atoms[s]
            if rest >= 0:
                out[:, s] = np.minimum(r.min_sites[rest] + self.sub_sites[s], INF)
        return out

    def frontier(self, counts: tuple[int, ...]) -> np.ndarray:
        hit = self._frontiers.get(counts)
        if hit is not None:
            return hit
        r = self.reach
        if not counts:
            hit = np.full((r.size, self.n_sub), INF, dtype=np.int64)
            hit[:, 0] = 0
        else:
            prev = self.frontier(counts[:-1])
            table = self._element_table(counts[-1])
            hit = np.full((r.size, self.n_sub), INF, dtype=np.int64)
            for q, s in self.sub_pairs:
                vals = prev[r.pair_rest, q ^ s] + table[r.pair_b, s]
                hit[:, q] = np.minimum(hit[:, q], np.minimum.reduceat(vals, r.pair_starts))
            hit = np.minimum(hit, INF)
        if len(self._frontiers) > 20_000:
            self._frontiers.clear()
        self._frontiers[counts] = hit
        return hit

    def min_cost(
        self, counts: Sequence[int], unknown: int, avail: int, remaining_required: tuple[int, ...]
    ) -> int:
        """Fewest sites for known ``counts`` + ``unknown`` new elements + ``remaining_required``.

        ``remaining_required`` must be a sub-multiset of ``self.required`` (the entries placed
        so far removed); ``avail`` must already exclude the reserved fixed ones.
        """
        key = tuple(sorted(c for c in counts if c > 0))
        if any(c > self.reach.max_count for c in key):
            return INF
        bits = self._bits(remaining_required)
        frontier = self.frontier(key)[avail]
        best = INF
        n_left = bin(bits).count("1")
        for q in range(self.n_sub):
            if q & bits != q or frontier[q] >= INF:
                continue
            rest = n_left - bin(q).count("1")  # entries for the unknown elements
            if rest and not unknown:
                continue
            # known holders' required sites are in the frontier; unknowns pay one site each,
            # or one per leftover entry when there are more entries than unknowns
            best = min(best, int(frontier[q]) + max(unknown, rest))
        return best

    def _bits(self, remaining_required: Sequence[int]) -> int:
        """Bitmask over ``self.required`` of the entries still to place."""
        bits, pool = 0, list(range(self.n_req))
        for p in remaining_required:
            for i in pool:
                if self.required[i] == p:
                    bits |= 1 << i
                    pool.remove(i)
                    break
        return bits

    def count_costs(
        self, counts: tuple[int, ...], unknown: int, avail: int, remaining_required: tuple[int, ...]
    ) -> np.ndarray:
        """``min_cost(counts + (c,), unknown, ...)`` for every c in 0..max_count at once."""
        r = self.reach
        bits = self._bits(remaining_required)
        prev = self.frontier(tuple(sorted(counts)))
        below = [b for b in range(r.size) if np.all(r._vectors[b] <= r._vectors[avail])]
        b_idx = np.array(below, dtype=np.int64)
        rest_idx = avail - b_idx
        sites_b = r.min_sites[:, b_idx]  # (max_count + 1, nb)
        n = r.max_count + 1
        with_q = np.full((self.n_sub, n), INF, dtype=np.int64)  # best per held subset q
        for q, s in self.sub_pairs:
            if q & bits != q:
                continue
            best = (prev[rest_idx, q ^ s][None, :] + sites_b).min(axis=1)  # per count c - atoms(s)
            shift = int(self.sub_atoms[s])
            if shift < n:
                shifted = np.full(n, INF, dtype=np.int64)
                shifted[shift:] = best[: n - shift] + self.sub_sites[s]
                with_q[q] = np.minimum(with_q[q], shifted)
        n_left = bin(bits).count("1")
        out = np.full(n, INF, dtype=np.int64)
        for q in range(self.n_sub):
            if q & bits != q:
                continue
            rest = n_left - bin(q).count("1")
            if rest and not unknown:
                continue
            out = np.minimum(out, with_q[q] + max(unknown, rest))
        return np.minimum(out, INF)


class ReachTables:
    """All groups' tables plus the flat all-groups layout used by the composition block."""

    def __init__(self, positions: dict[int, Sequence[tuple[int, int]]], max_count: int) -> None:
        self.max_count = max_count
        self.groups = {
            g: GroupReach(g, tuple(m for m, _ in pos), tuple(nf for _, nf in pos), max_count)
            for g, pos in sorted(positions.items())
        }
        self.group_ids = np.array(sorted(self.groups), dtype=np.int64)
        sizes = [self.groups[g].size for g in self.group_ids]
        self.offsets = np.r_[0, np.cumsum(sizes)[:-1]].astype(np.int64)
        self.n_slots = int(sum(sizes))
        self.full_slots = np.array(
            [off + self.groups[g].full for g, off in zip(self.group_ids, self.offsets, strict=True)],
            dtype=np.int64,
        )
        pa, pb, pr, comp = [], [], [], []
        for g, off in zip(self.group_ids, self.offsets, strict=True):
            r = self.groups[g]
            pa.append(r.pair_a + off)
            pb.append(r.pair_b + off)
            pr.append(r.pair_rest + off)
            comp.append(off + r.full - np.arange(r.size))
        self.pair_a = np.concatenate(pa)
        self.pair_b = np.concatenate(pb)
        self.pair_rest = np.concatenate(pr)
        self.pair_starts = np.flatnonzero(np.r_[True, self.pair_a[1:] != self.pair_a[:-1]])
        self.min_sites_flat = np.concatenate([self.groups[g].min_sites for g in self.group_ids], axis=1)
        # min_sites of the complement pool: the pool left for a new count once the prefix used b
        # count_costs, the hot path: groups with the same fixed classes and free multiplicities
        # have the same tables (230 groups -> 124 kinds), and each kind's pool vectors are padded
        # to its size bucket so that a plain contiguous min replaces a ragged reduceat (~6x).
        comp_table = np.minimum(self.min_sites_flat[:, np.concatenate(comp)], _INF16).astype(np.int16)
        comp_table = np.concatenate([comp_table, np.full((max_count + 1, 1), _INF16, np.int16)], axis=1)
        kinds: dict[tuple, int] = {}
        kind_of_group, kind_first = [], []
        for i, g in enumerate(self.group_ids):
            r = self.groups[g]
            free = tuple(sorted({m for m, nf in zip(r.mults, r.n_free, strict=True) if nf > 0}))
            kind = kinds.setdefault((r.class_mults, r.class_caps, free), len(kinds))
            if kind == len(kind_first):
                kind_first.append(i)
            kind_of_group.append(kind)
        self._kind_of_group = np.array(kind_of_group, dtype=np.int64)
        self._n_kinds = len(kinds)
        self._buckets = []  # (kinds, slot matrix padded with the INF slot n_slots, table)
        lower = 0
        for width in (2, 4, 9, 27):
            members = [k for k, i in enumerate(kind_first) if lower < sizes[i] <= width]
            lower = width
            if not members:
                continue
            slots = np.full((len(members), width), self.n_slots, dtype=np.int64)
            for row, k in enumerate(members):
                i = kind_first[k]
                slots[row, : sizes[i]] = self.offsets[i] + np.arange(sizes[i])
            table = np.ascontiguousarray(comp_table.T[slots])  # (kinds, width, max_count + 1)
            self._buckets.append((np.array(members), slots, table))
        self._flat: dict[tuple[int, ...], np.ndarray] = {(): np.zeros(self.n_slots, dtype=np.int64)}
        self._required: dict[tuple[int, tuple[int, ...]], RequiredReach] = {}

    def flat_frontier(self, counts: tuple[int, ...]) -> np.ndarray:
        """``D_R`` of every group side by side (n_slots,), for sorted positive ``counts``."""
        hit = self._flat.get(counts)
        if hit is None:
            prev = self.flat_frontier(counts[:-1])
            vals = prev[self.pair_rest] + self.min_sites_flat[counts[-1], self.pair_b]
            hit = np.minimum(np.minimum.reduceat(vals, self.pair_starts), INF)
            if len(self._flat) > 5_000:  # 11 kB each
                self._flat.clear()
                self._flat[()] = np.zeros(self.n_slots, dtype=np.int64)
            self._flat[counts] = hit
        return hit

    def group_costs(self, counts: tuple[int, ...]) -> np.ndarray:
        """Fewest sites per group (aligned with ``group_ids``) for exactly these counts."""
        return self.flat_frontier(counts)[self.full_slots]

    def count_costs(self, counts: tuple[int, ...]) -> np.ndarray:
        """(max_count + 1, n_groups) int16: fewest sites for ``counts`` plus one more count c.

        Row 0 is meaningless; anything >= 10,000 means impossible. Not cached here (236 kB
        each): the grammar caches the resulting masks.
        """
        frontier = np.empty(self.n_slots + 1, dtype=np.int16)
        frontier[:-1] = np.minimum(self.flat_frontier(counts), _INF16)
        frontier[-1] = _INF16
        per_kind = np.empty((self._n_kinds, self.max_count + 1), dtype=np.int16)
        for members, slots, table in self._buckets:
            total = frontier[slots][:, :, None] + table  # <= 2 * _INF16, no overflow
            per_kind[members] = total.min(axis=1)
        return per_kind[self._kind_of_group].T

    def required(self, group: int, required: tuple[int, ...]) -> RequiredReach:
        key = (group, required)
        hit = self._required.get(key)
        if hit is None:
            hit = self._required[key] = RequiredReach(self.groups[group], required)
        return hit


def brute_min_cost(
    mults: Sequence[int],
    n_free: Sequence[int],
    counts: Sequence[int],
    used: frozenset[int],
    budget: int,
) -> bool:
    """Slow reference: can ``counts`` be placed on explicit positions within ``budget`` sites?

    Depth-first search over concrete positions (no class collapsing, no tables); used by the
    tests to check the tables. Positions are taken in non-decreasing index per element.
    """
    n_pos = len(mults)
    max_mult = max(mults)
    memo: dict = {}

    def search(rest: tuple[int, ...], used_now: frozenset[int], left: int, start: int) -> bool:
        if not any(rest):
            return True
        if left <= 0 or sum(rest) > left * max_mult:
            return False
        key = (rest, used_now, left, start)
        if key in memo:
            return memo[key]
        i = next(j for j, c in enumerate(rest) if c > 0)
        ok = False
        for p in range(start, n_pos):
            m = mults[p]
            if m > rest[i] or (n_free[p] == 0 and p in used_now):
                continue
            new_rest = rest[:i] + (rest[i] - m,) + rest[i + 1 :]
            new_used = used_now | {p} if n_free[p] == 0 else used_now
            # the same element continues from p; the next element restarts from 0
            nxt = p if new_rest[i] > 0 else 0
            if search(new_rest, new_used, left - 1, nxt):
                ok = True
                break
        memo[key] = ok
        return ok

    return search(tuple(counts), used, budget, 0)


__all__ = ["INF", "GroupReach", "RequiredReach", "ReachTables", "brute_min_cost", "reach_tables"]


@functools.cache
def reach_tables() -> ReachTables:
    """Tables for the project's Wyckoff table and vocabulary limits (built once, ~0.2 s)."""
    from matra_hpc.tokens.vocab import MAX_COUNT
    from matra_hpc.tokens.wyckoff import wyckoff_table

    positions = {g: [(p.multiplicity, p.n_free) for p in ps] for g, ps in wyckoff_table().items()}
    return ReachTables(positions, MAX_COUNT)
