"""The kind of every continuous slot of a token sequence: free coordinate, lattice length, angle.

A ``<num>`` token carries one of three kinds of value (docs/contracts.md section A): a free
coordinate of a Wyckoff site (fractional, periodic, in [0, 1)), a lattice length (Angstrom) or a
lattice angle (degrees). Which one is fixed by the layout: the ``n_free`` values after a Wyckoff
token and its element are coordinates; the values after the last site are the lattice parameters
of the space group's crystal system, in the order of ``lattice_parameter_names``.

The model takes the kind of the *next* slot as an input (typed value slots, ``ModelConfig.
slot_kinds``) and normalises each kind's values its own way. Training reads the kinds of whole
sequences with :func:`sequence_slot_kinds` (vectorised over a padded batch); the sampler asks
the grammar for the kind of the slot a prefix expects next (:func:`grammar_slot_kind`). A test
checks that the two agree on every value of the demo store.

Kinds are small integers: ``NONE`` (the token is not ``<num>``), ``COORD``, ``LENGTH``, ``ANGLE``.
"""

from __future__ import annotations

import functools

import numpy as np

NONE, COORD, LENGTH, ANGLE = 0, 1, 2, 3
N_KINDS = 4
KIND_NAMES = ("none", "coordinate", "length", "angle")
VALUE_KINDS = (COORD, LENGTH, ANGLE)
_MAX_LATTICE = 6


@functools.cache
def _tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Per token id: free parameters of a Wyckoff token, whether it is a space group token,
    and per space-group token the kinds of its lattice values (padded with NONE)."""
    from matra_hpc.tokens import load_vocab, wyckoff_table
    from matra_hpc.tokens.wyckoff import lattice_parameter_names

    vocab = load_vocab()
    n_free = np.zeros(vocab.size, dtype=np.int64)
    is_wyckoff = np.zeros(vocab.size, dtype=bool)
    for group, positions in wyckoff_table().items():
        for p in positions:
            token = vocab.wyckoff(group, p.letter)
            n_free[token] = p.n_free  # a shared-orbit token has the same free axes in every group
            is_wyckoff[token] = True
    lattice = np.zeros((vocab.size, _MAX_LATTICE), dtype=np.int8)
    for g in range(1, 231):
        names = lattice_parameter_names(g)
        kinds = [LENGTH if n in ("a", "b", "c") else ANGLE for n in names]
        lattice[vocab.spacegroup(g), : len(kinds)] = kinds
    return n_free, is_wyckoff, lattice, vocab.num


def sequence_slot_kinds(tokens: np.ndarray) -> np.ndarray:
    """Kind of each position's value for whole sequences (B, T) or one sequence (T,).

    ``tokens`` are sequence tokens (no ``<bos>``; padding after ``<end>`` is fine). Positions
    whose token is not ``<num>`` get ``NONE``. Cut sequences give the kinds their prefix implies.
    """
    n_free, is_wyckoff, lattice, num_id = _tables()
    tok = np.asarray(tokens, dtype=np.int64)
    flat = tok.ndim == 1
    tok = np.atleast_2d(tok)
    B, T = tok.shape
    idx = np.broadcast_to(np.arange(T), (B, T))
    tok_c = np.clip(tok, 0, len(n_free) - 1)
    is_num = tok == num_id
    # position of the latest Wyckoff token at or before each position (-1: none yet)
    w_pos = np.maximum.accumulate(np.where(is_wyckoff[tok_c], idx, -1), axis=1)
    w_tok = np.take_along_axis(tok_c, np.maximum(w_pos, 0), axis=1)
    offset = idx - w_pos
    # W El <num>*n_free: the values at offsets 2 .. n_free + 1 after the Wyckoff token
    coord = is_num & (w_pos >= 0) & (offset >= 2) & (offset <= n_free[w_tok] + 1)
    lat = is_num & ~coord
    lat_index = np.cumsum(lat, axis=1) - 1
    sg_row = lattice[tok_c].any(axis=2)  # (B, T): positions holding a space group token
    sg_tok = np.take_along_axis(tok_c, np.argmax(sg_row, axis=1)[:, None], axis=1)[:, 0]  # (B,)
    lat_kinds = lattice[sg_tok]  # (B, 6)
    kinds = np.where(coord, COORD, NONE).astype(np.int8)
    li = np.clip(lat_index, 0, _MAX_LATTICE - 1)
    kinds = np.where(lat & (lat_index < _MAX_LATTICE), np.take_along_axis(lat_kinds, li, axis=1), kinds)
    kinds = kinds.astype(np.int8)
    return kinds[0] if flat else kinds


def grammar_slot_kind(grammar, state) -> int:
    """Kind of the next slot of a prefix, from the grammar: ``NONE`` unless a value comes next."""
    kind = grammar.value_kind(state)
    return NONE if kind is None else KIND_NAMES.index(kind)


def value_abs_errors(pred, target, kinds) -> dict[int, np.ndarray]:
    """Absolute error of each value per kind, in the values' units: coordinates as the periodic
    distance (0.98 vs 0.02 is 0.04), lengths in A, angles in degrees. Accepts tensors or arrays."""
    p, t, k = (np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x) for x in (pred, target, kinds))
    out = {}
    for kind in VALUE_KINDS:
        m = k == kind
        d = np.abs(p[m].astype(np.float64) - t[m].astype(np.float64))
        if kind == COORD:
            d = np.minimum(d % 1.0, 1.0 - d % 1.0)
        out[kind] = d
    return out


@functools.cache
def _count_values() -> np.ndarray:
    from matra_hpc.tokens import load_vocab

    vocab = load_vocab()
    values = np.zeros(vocab.size, dtype=np.int64)
    lo, hi = vocab.count_range
    values[lo:hi] = np.arange(1, hi - lo + 1)
    return values


def sequence_cell_atoms(tokens: np.ndarray) -> np.ndarray:
    """Atoms in the conventional cell, the sum of the composition block's counts, per row of
    (B, T) tokens (or one int for (T,)); a prefix gives the counts it has so far."""
    values = _count_values()
    tok = np.clip(np.asarray(tokens, dtype=np.int64), 0, len(values) - 1)
    return values[tok].sum(axis=-1)


# Closeness (fractional) within which an image of an earlier atom counts as lying on the current
# site's line, plane or point: the width of the weight of a repelled value.
AXIS_WIDTH = 0.02
MAX_REPEL = 32


@functools.lru_cache(maxsize=65536)
def _orbit(group: int, index: int, free: tuple[float, ...]) -> np.ndarray:
    from matra_hpc.tokens.wyckoff import position_ops

    ops = position_ops(group)[index]
    seed = np.zeros(3)
    seed[list(ops.free_axes)] = free
    return np.mod(ops.ops[:, :, :3] @ seed + ops.ops[:, :, 3], 1.0)


def _site_walk(tokens, values):
    """Walk a sequence: yields (position, group, position index, axis, values so far of the site,
    earlier sites [(position index, values)]) at every coordinate position."""
    from matra_hpc.tokens import load_vocab

    vocab = load_vocab()
    w_lo, w_hi = vocab.wyckoff_range
    sg_lo, sg_hi = vocab.spacegroup_range
    group = 0
    sites: list[tuple[int, tuple[float, ...]]] = []
    current: list[float] = []
    index, n_free, expect, pending = -1, 0, 0, -1
    for t, token in enumerate(tokens):
        token = int(token)
        if token == vocab.num and expect > 0:
            yield t, group, index, len(current), current, sites
            current.append(float(values[t]))
            expect -= 1
            if expect == 0:
                sites.append((index, tuple(current)))
        elif sg_lo <= token < sg_hi:
            group = token - sg_lo + 1
        elif w_lo <= token < w_hi and group:
            position = vocab.wyckoff_of(group, token)
            pending = position.index if position is not None else -1
            n_free = position.n_free if position is not None else 0
        elif pending >= 0:  # the site's element: its free values follow
            index, current, expect = pending, [], n_free
            if n_free == 0:
                sites.append((index, ()))
            pending = -1


def _earlier_atoms(group: int, sites: list[tuple[int, tuple[float, ...]]]) -> np.ndarray:
    """Every atom (n, 3) of the finished sites: each site's orbit under the group."""
    if not sites:
        return np.zeros((0, 3))
    return np.concatenate([_orbit(group, i, v) for i, v in sites])


@functools.lru_cache(maxsize=8192)
def _repel_plan(group: int, index: int, axis: int) -> np.ndarray:
    """Per (position, free axis), computed once, as one read-only row of 15 numbers: the row
    (and sign, and the representative's shift on it) the free value is read back from; the
    atom's move per unit of each earlier free value (2 x 3, zero where there is none) and of
    this one (3); the representative's shift (3). Only the site's last free value is repelled,
    so no free value comes after ``axis``; a site has at most three."""
    from matra_hpc.tokens.wyckoff import position_ops

    ops = position_ops(group)[index]
    rep, shift = ops.ops[0, :, :3], ops.ops[0, :, 3]
    if axis != len(ops.free_axes) - 1:
        raise ValueError(f"free value {axis} of position {index} of group {group} is not its last")
    moves = rep[:, list(ops.free_axes)].T  # (n_free, 3)
    row = int(ops.read_rows[axis])
    plan = np.zeros(15)
    plan[:3] = row, float(ops.read_signs[axis]), shift[row]
    plan[3 : 3 + 3 * axis] = moves[:axis].ravel()
    plan[9:12], plan[12:] = moves[axis], shift
    plan.flags.writeable = False
    return plan


def _repel_candidates(group: int, index: int, axis: int, current, points: np.ndarray) -> tuple[list[float], list[float]]:
    """Values of the current site's last free parameter that would put it on an image of an earlier
    atom (``points`` (n, 3)), with weights: how close that image lies to the site's locus given its
    other values; and the values where its own orbit collapses. One entry per distinct value
    (rounded to 1e-6), with its largest weight, in increasing order; at most ``MAX_REPEL`` (the
    heaviest)."""
    return _repel_candidates_many([(group, index, axis, current, points)])[0]


def _repel_candidates_many(sites: list[tuple]) -> list[tuple[list[float], list[float]]]:
    """``_repel_candidates`` of several sites (group, index, axis, values so far, earlier atoms)
    at once: the earlier atoms and own orbits of all of them in one set of array operations (the
    sampler's rows of one step). Element-wise operations only, so a site's lists do not depend on
    the others."""
    # each site's earlier free values, zero-padded to two (a site has at most three free values)
    before = np.array([(*site[3][: site[2]], 0.0, 0.0)[:2] for site in sites], dtype=np.float64)
    counts = [len(site[4]) for site in sites]
    if sum(counts):
        owner = np.repeat(np.arange(len(sites)), counts)
        points = np.concatenate([site[4] for site in sites if len(site[4])])
        plans = np.array([_repel_plan(site[0], site[1], site[2]) for site in sites])  # (n, 15)
        # the site's atom at its values so far and x on the last axis: base + x * move
        base = plans[:, 12:] + (before[:, :1] * plans[:, 3:6] + before[:, 1:2] * plans[:, 6:9])
        # per earlier atom, its site's read row, sign and shift on it, base and move: one gather
        on = np.concatenate([plans[:, :3], base, plans[:, 9:12]], axis=1)[owner]
        # the last free value each earlier atom implies, then how far the site's atom is from it
        reps = np.mod(on[:, 1] * (points[np.arange(len(points)), on[:, 0].astype(np.int64)] - on[:, 2]), 1.0)
        d = on[:, 3:6] + reps[:, None] * on[:, 6:] - points
        d -= np.rint(d)
        weights = np.exp(np.einsum("ij,ij->i", d, d) * (-0.5 / AXIS_WIDTH**2))
    else:
        owner = np.zeros(0, dtype=np.int64)
        reps = weights = np.zeros(0)
    own_owner, own_reps, own_weights = _own_orbit_candidates_many(sites, before)
    all_owner = np.concatenate([owner, own_owner])
    all_reps = np.concatenate([reps, own_reps])
    all_weights = np.concatenate([weights, own_weights])
    keep = all_weights > 1e-3
    all_owner, all_reps, all_weights = all_owner[keep], np.round(all_reps[keep], 6), all_weights[keep]
    # one entry per (site, value), the largest weight: sort by site, value, weight descending
    order = np.lexsort((-all_weights, all_reps, all_owner))
    all_owner, all_reps, all_weights = all_owner[order], all_reps[order], all_weights[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = (all_owner[1:] != all_owner[:-1]) | (all_reps[1:] != all_reps[:-1])
    all_owner, all_reps, all_weights = all_owner[first], all_reps[first], all_weights[first]
    bounds = np.searchsorted(all_owner, np.arange(len(sites) + 1)).tolist()
    all_reps, all_weights = all_reps.tolist(), all_weights.tolist()
    out = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        values, out_w = all_reps[a:b], all_weights[a:b]
        if len(values) > MAX_REPEL:
            top = np.argsort(-np.array(out_w))[:MAX_REPEL]  # the heaviest, heaviest first
            values, out_w = [values[j] for j in top], [out_w[j] for j in top]
        out.append((values, out_w))
    return out


def _own_orbit_candidates_many(sites: list[tuple], before: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Values of each site's free parameter ``axis`` (the earlier ones ``before`` fixed) where
    another atom of its own orbit lands on the first (the orbit collapses onto a special
    position), with weights, as (site, value, weight) arrays. D_k(x) = w_k + u_k x is the
    distance between image k and the representative; it vanishes (mod 1) at x = (n - w) / u for
    each component with u != 0 and n < |u|. A site's first free value depends on its position
    alone and is cached whole; the others are solved for all sites at once."""
    first_sites, first_counts, reps, weights = [], [], [], []
    later, later_plans = [], []
    for s, site in enumerate(sites):
        if site[2] == 0:
            x, w = _own_orbit_first(site[0], site[1])
            first_sites.append(s)
            first_counts.append(len(x))
            reps.append(x)
            weights.append(w)
        else:
            plan = _own_orbit_plan(site[0], site[1], site[2])
            if plan is not None:
                later.append(s)
                later_plans.append(plan)
    owners = [np.repeat(np.array(first_sites, dtype=np.int64), first_counts)]
    if later_plans:
        site_of = np.repeat(np.array(later), [len(plan[1]) for plan in later_plans])
        x, w = _own_orbit_solve(*(np.concatenate(part) for part in zip(*later_plans, strict=True)), before[site_of])
        owners.append(site_of)
        reps.append(x)
        weights.append(w)
    if not reps:
        return np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0)
    return np.concatenate(owners), np.concatenate(reps), np.concatenate(weights)


@functools.lru_cache(maxsize=4096)
def _own_orbit_first(group: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    plan = _own_orbit_plan(group, index, 0)
    if plan is None:
        return np.zeros(0), np.zeros(0)
    return _own_orbit_solve(*plan, np.zeros((len(plan[1]), 2)))


@functools.lru_cache(maxsize=8192)
def _own_orbit_plan(group: int, index: int, axis: int):
    """What of the own-orbit solution depends on the position and axis only (computed once), one
    row per solution, i.e. per (image, component) pair with u != 0 and integer n < |u|: how the
    pair's w follows from the earlier free values (V, 3, 2, zero-padded), its offset (V, 3), u
    (V, 3), the component and its u, and n; None when no image moves with the value."""
    from matra_hpc.tokens.wyckoff import position_ops

    ops = position_ops(group)[index]
    rep, shift = ops.ops[0, :, :3], ops.ops[0, :, 3]
    others = ops.ops[1:]
    diff = others[:, :, :3] - rep  # (m-1, 3, 3)
    offset = others[:, :, 3] - shift  # (m-1, 3)
    u = diff[:, :, ops.free_axes[axis]]  # (m-1, 3), integers
    k_idx, i_idx = np.nonzero(np.abs(u) > 0.5)
    if not len(k_idx):
        return None
    uu = u[k_idx, i_idx]
    steps = np.abs(np.rint(uu)).astype(int)
    pair = np.repeat(np.arange(len(k_idx)), steps)  # one row per solution, pair by pair
    n = np.concatenate([np.arange(step) for step in steps]).astype(np.float64)
    before_cols = np.zeros((len(k_idx), 3, 2))
    before_cols[:, :, :axis] = diff[k_idx][:, :, list(ops.free_axes[:axis])]  # w of each pair's image
    return before_cols[pair], offset[k_idx][pair], u[k_idx][pair], i_idx[pair], uu[pair], n


def _own_orbit_solve(before_cols, offset, u, i_idx, uu, n, before) -> tuple[np.ndarray, np.ndarray]:
    """The own-orbit values and weights of ``_own_orbit_plan``'s solutions (of one position or
    several, concatenated); ``before`` (V, 2): the earlier free values of each solution's site."""
    w = offset + (before_cols[:, :, 0] * before[:, :1] + before_cols[:, :, 1] * before[:, 1:])  # (V, 3)
    x = np.mod((n - w[np.arange(len(w)), i_idx]) / uu, 1.0)
    dd = w + x[:, None] * u
    dd -= np.rint(dd)
    return x, np.exp(-0.5 * (dd**2).sum(axis=-1) / AXIS_WIDTH**2)


def site_repulsion(group: int, index: int, current, points: np.ndarray) -> tuple[list[float], list[float]]:
    """The repulsion context of the next free value of a site (group, position index, its values
    so far ``current``, the earlier atoms ``points`` (n, 3)): empty unless it is the site's last
    free value. The sampler reads these from the grammar's state (``Grammar.site_context``),
    training from the tokens (``repulsion_context``); both end here."""
    axis = len(current)
    if axis != position_free_count(group, index) - 1:
        return [], []
    return _repel_candidates(group, index, axis, current, points)


def site_repulsion_many(contexts: list[tuple]) -> list[tuple[list[float], list[float]]]:
    """``site_repulsion`` of several sites at once (``Grammar.site_context`` of each): what the
    sampler asks for all rows of one step; the same lists as one by one."""
    out: list[tuple[list[float], list[float]]] = [([], [])] * len(contexts)
    todo = [k for k, (group, index, current, _) in enumerate(contexts)
            if len(current) == position_free_count(group, index) - 1]
    if todo:
        found = _repel_candidates_many([(contexts[k][0], contexts[k][1], len(contexts[k][2]), contexts[k][2],
                                         contexts[k][3]) for k in todo])
        for k, lists in zip(todo, found, strict=True):
            out[k] = lists
    return out


def repulsion_context(tokens, values) -> tuple[list[float], list[float]]:
    """For the next value of a prefix, when it is the *last* free value of a site: the values of it
    that would put the site's atom onto an earlier atom (an image of an earlier site under the
    group) or onto another atom of its own orbit (a special position), with weights for how
    exactly (the site's other values fixed). Empty otherwise. The
    model's coordinate head learns how strongly to keep away from them
    (``ModelConfig.coord_repulsion``)."""
    out = _repulsion_positions(np.asarray(tokens), np.asarray(values, dtype=np.float64), len(tokens), only_last=True)
    return out.get(len(tokens), ([], []))


def _repulsion_positions(
    tokens: np.ndarray, values: np.ndarray, upto: int, only_last: bool = False
) -> dict[int, tuple[list, list]]:
    from matra_hpc.tokens import load_vocab

    toks = list(tokens[:upto]) + [load_vocab().num]  # a value at ``upto`` (the next slot) too
    vals = list(values[:upto]) + [np.nan]
    out: dict[int, tuple[list, list]] = {}
    for t, group, index, axis, current, sites in _site_walk(toks, vals):
        if axis != position_free_count(group, index) - 1 or (only_last and t != upto):
            continue
        reps, weights = _repel_candidates(group, index, axis, current, _earlier_atoms(group, sites))
        if reps:
            out[t] = (reps, weights)
    return out


@functools.cache
def position_free_count(group: int, index: int) -> int:
    from matra_hpc.tokens import wyckoff_table

    return wyckoff_table()[group][index].n_free


def sequence_repulsion(
    tokens: np.ndarray, values: np.ndarray, max_reps: int = MAX_REPEL
) -> tuple[np.ndarray, np.ndarray]:
    """``repulsion_context`` at every position of whole sequences (B, T): values and weights
    (B, T, R), weight 0 where there is nothing to repel (padding)."""
    tok = np.atleast_2d(np.asarray(tokens))
    val = np.atleast_2d(np.asarray(values, dtype=np.float64))
    B, T = tok.shape
    per_row = [_repulsion_positions(tok[b], val[b], T) for b in range(B)]
    R = min(max_reps, max((len(r[0]) for row in per_row for r in row.values()), default=0))
    reps = np.zeros((B, T, max(R, 1)))
    weights = np.zeros((B, T, max(R, 1)))
    for b, row in enumerate(per_row):
        for t, (r, w) in row.items():
            if t < T:
                k = min(len(r), R)
                reps[b, t, :k], weights[b, t, :k] = r[:k], w[:k]
    return reps, weights
