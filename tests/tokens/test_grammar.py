"""The token grammar: no dead ends, exact masks, value ranges, real sequences accepted."""

from __future__ import annotations

import math

import numpy as np
import pytest

from matra_hpc.tokens import TokenSequence, load_vocab, wyckoff_table
from matra_hpc.tokens._reachability import brute_min_cost, reach_tables
from matra_hpc.tokens.grammar import (
    ANGLE_MAX,
    ANGLE_MIN,
    LENGTH_MAX,
    LENGTH_MIN,
    Grammar,
    GrammarError,
    GrammarState,
)
from matra_hpc.tokens.wyckoff import lattice_parameter_names

try:  # decode lands with the encoder; until then the walks check structure only
    from matra_hpc.tokens import decode, encode
except ImportError:  # pragma: no cover - only before the encoder is committed
    decode = encode = None

VOCAB = load_vocab()
TABLE = wyckoff_table()


@pytest.fixture(scope="module")
def grammar() -> Grammar:
    return Grammar()


def random_walk(grammar: Grammar, rng: np.random.Generator, stop_at: int | None = None):
    """Uniform choices over the mask and uniform values in value_range; returns (seq, state)."""
    state = grammar.new_states(1)[0]
    tokens: list[int] = []
    values: list[float] = []
    while not grammar.is_complete(state) and (stop_at is None or len(tokens) < stop_at):
        allowed = np.flatnonzero(grammar.mask(state))
        assert allowed.size, f"dead end after {[VOCAB.token_str(t) for t in tokens]}"
        token = int(rng.choice(allowed))
        value = math.nan
        if token == VOCAB.num:
            lo, hi = grammar.value_range(state)
            assert lo < hi
            for _ in range(100):  # the sampler's rule: redraw what value_allowed refuses
                value = float(rng.uniform(lo, hi))
                if grammar.value_allowed(state, value):
                    break
            else:
                raise AssertionError("no allowed value in 100 draws")
        grammar.advance(state, token, value)
        tokens.append(token)
        values.append(value)
    return TokenSequence(tokens, values), state


def parse(seq: TokenSequence) -> dict:
    """Split a complete sequence into its blocks (independently of the grammar)."""
    v, toks, vals = VOCAB, seq.tokens, seq.values
    i = 0
    props = []
    while v.kind(toks[i]) == "property":
        props.append(toks[i])
        i += 1
    k = v.arity_of(toks[i])
    i += 1
    comp = {}
    for _ in range(k):
        comp[v.element_of(toks[i])] = v.count_of(toks[i + 1])
        i += 2
    g = v.spacegroup_of(toks[i])
    i += 1
    sites = []
    while v.kind(toks[i]) == "wyckoff":
        pos = v.wyckoff_of(g, toks[i])
        z = v.element_of(toks[i + 1])
        free = vals[i + 2 : i + 2 + pos.n_free]
        sites.append((pos, z, free))
        i += 2 + pos.n_free
    n_lat = len(lattice_parameter_names(g))
    lattice = vals[i : i + n_lat]
    assert all(t == v.num for t in toks[i : i + n_lat])
    assert toks[i + n_lat :] == [v.end]
    return {"props": props, "composition": comp, "group": g, "sites": sites, "lattice": lattice}


def check_structure(parsed: dict, max_sites: int = 15) -> None:
    """The crystal facts a complete sequence must satisfy."""
    placed: dict[int, int] = {}
    fixed_used = set()
    for pos, z, free in parsed["sites"]:
        placed[z] = placed.get(z, 0) + pos.multiplicity
        assert all(0.0 <= x < 1.0 for x in free)
        if pos.n_free == 0:
            assert pos.letter not in fixed_used, "fixed position used twice"
            fixed_used.add(pos.letter)
    assert placed == parsed["composition"]
    assert len(parsed["sites"]) <= max_sites
    assert parsed["group"] != 1
    lat = parsed["lattice"]
    names = lattice_parameter_names(parsed["group"])
    params = dict(zip(names, lat, strict=True))
    for name in ("a", "b", "c"):
        if name in params:
            assert LENGTH_MIN <= params[name] <= LENGTH_MAX
    if "gamma" in params:
        ca, cb, cg = (math.cos(math.radians(params[x])) for x in ("alpha", "beta", "gamma"))
        assert 1 - ca * ca - cb * cb - cg * cg + 2 * ca * cb * cg > 0, "non-positive cell volume"


def test_random_walks_complete_and_decode(grammar: Grammar) -> None:
    rng = np.random.default_rng(20261125)
    n_decoded = 0
    for i in range(2000):
        seq, state = random_walk(grammar, rng)
        assert grammar.is_complete(state)
        assert len(seq) <= grammar.max_length()
        assert grammar.accepts(seq)
        check_structure(parse(seq))
        if decode is not None and i % 4 == 0:  # decode costs about half a walk
            structure = decode(seq)
            assert structure.composition.num_atoms == sum(parse(seq)["composition"].values())
            n_decoded += 1
    if decode is not None:
        assert n_decoded == 500


def test_batched_masks_equal_single_masks(grammar: Grammar) -> None:
    rng = np.random.default_rng(7)
    states = [random_walk(grammar, rng, stop_at=int(rng.integers(0, 60)))[1] for _ in range(200)]
    batch = grammar.masks(states)
    assert batch.shape == (200, VOCAB.size)
    for row, state in zip(batch, states, strict=True):
        assert np.array_equal(row, grammar.mask(state))
    assert grammar.masks([]).shape == (0, VOCAB.size)


def test_illegal_tokens_and_values_are_refused(grammar: Grammar) -> None:
    state = grammar.new_states(1)[0]
    for bad in (VOCAB.pad, VOCAB.bos, VOCAB.end, VOCAB.num, VOCAB.element(8), VOCAB.size + 3):
        with pytest.raises(GrammarError):
            grammar.advance(state, bad)
    assert state.length == 0
    for token in (VOCAB.ehull_low, VOCAB.arity(2)):
        grammar.advance(state, token)
    with pytest.raises(GrammarError):  # only one property token, and only before the arity
        grammar.advance(state, VOCAB.ehull_high)
    grammar.advance(state, VOCAB.element(11))
    with pytest.raises(GrammarError):
        grammar.advance(state, VOCAB.element(17))  # a count must follow
    grammar.advance(state, VOCAB.count(4))
    with pytest.raises(GrammarError):
        grammar.advance(state, VOCAB.element(11))  # each element once
    grammar.advance(state, VOCAB.element(17))
    grammar.advance(state, VOCAB.count(4))
    with pytest.raises(GrammarError):
        grammar.advance(state, VOCAB.spacegroup(1))  # never encoded
    with pytest.raises(GrammarError):
        grammar.advance(state, VOCAB.spacegroup(230))  # Ia-3d: smallest multiplicity 16
    grammar.advance(state, VOCAB.spacegroup(225))
    with pytest.raises(GrammarError):
        grammar.advance(state, VOCAB.wyckoff(225, "c"))  # 8c cannot take a count of 4
    grammar.advance(state, VOCAB.wyckoff(225, "a"))
    grammar.advance(state, VOCAB.element(11))
    with pytest.raises(GrammarError):
        grammar.advance(state, VOCAB.wyckoff(225, "a"))  # fixed position already used
    with pytest.raises(GrammarError):
        grammar.advance(state, VOCAB.wyckoff(225, "e"))  # 24e > remaining 4 of Cl
    grammar.advance(state, VOCAB.wyckoff(225, "b"))
    with pytest.raises(GrammarError):
        grammar.advance(state, VOCAB.element(11))  # Na is complete
    grammar.advance(state, VOCAB.element(17))
    assert grammar.value_range(state) == (LENGTH_MIN, LENGTH_MAX)
    with pytest.raises(GrammarError):
        grammar.advance(state, VOCAB.num, 0.2)
    with pytest.raises(GrammarError):
        grammar.advance(state, VOCAB.num, math.nan)
    grammar.advance(state, VOCAB.num, 5.64)
    grammar.advance(state, VOCAB.end)
    assert grammar.is_complete(state)
    assert not grammar.mask(state).any()


def test_rocksalt_only_in_groups_that_realise_it(grammar: Grammar) -> None:
    state = grammar.new_states(1)[0]
    for t in (VOCAB.arity(2), VOCAB.element(11), VOCAB.count(4), VOCAB.element(17), VOCAB.count(4)):
        grammar.advance(state, t)
    allowed = {VOCAB.spacegroup_of(t) for t in np.flatnonzero(grammar.mask(state))}
    assert {225, 216, 221, 123, 139, 2}.issubset(allowed)
    assert 1 not in allowed
    assert 230 not in allowed  # Ia-3d: smallest multiplicity 16
    assert 227 not in allowed  # Fd-3m: smallest multiplicity 8


def test_coordinates_are_half_open(grammar: Grammar) -> None:
    state2 = grammar.new_states(1)[0]
    for t in (VOCAB.arity(1), VOCAB.element(6), VOCAB.count(4), VOCAB.spacegroup(194)):
        grammar.advance(state2, t)
    grammar.advance(state2, VOCAB.wyckoff(194, "f"))  # 4f (1/3, 2/3, z)
    grammar.advance(state2, VOCAB.element(6))
    assert grammar.value_range(state2) == (0.0, 1.0)
    with pytest.raises(GrammarError):
        grammar.advance(state2.copy(), VOCAB.num, 1.0)
    grammar.advance(state2, VOCAB.num, 0.0)
    assert grammar.value_range(state2) == (LENGTH_MIN, LENGTH_MAX)


def test_triclinic_gamma_range_keeps_volume_positive(grammar: Grammar) -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        state = grammar.new_states(1)[0]
        for t in (VOCAB.arity(1), VOCAB.element(1), VOCAB.count(2), VOCAB.spacegroup(2)):
            grammar.advance(state, t)
        grammar.advance(state, VOCAB.wyckoff(2, "i"))
        grammar.advance(state, VOCAB.element(1))
        for x in (0.1, 0.2, 0.3):
            grammar.advance(state, VOCAB.num, x)
        for _ in range(3):
            grammar.advance(state, VOCAB.num, 4.0)
        alpha = float(rng.choice([ANGLE_MIN, ANGLE_MAX, rng.uniform(ANGLE_MIN, ANGLE_MAX)]))
        beta = float(rng.choice([ANGLE_MIN, ANGLE_MAX, rng.uniform(ANGLE_MIN, ANGLE_MAX)]))
        grammar.advance(state, VOCAB.num, alpha)
        grammar.advance(state, VOCAB.num, beta)
        lo, hi = grammar.value_range(state)
        assert lo < hi
        for gamma in (lo, hi, (lo + hi) / 2):
            ca, cb, cg = (math.cos(math.radians(x)) for x in (alpha, beta, gamma))
            assert 1 - ca * ca - cb * cb - cg * cg + 2 * ca * cb * cg > 0
        with pytest.raises(GrammarError):
            grammar.advance(state.copy(), VOCAB.num, hi + 0.5)


def test_value_range_only_for_num(grammar: Grammar) -> None:
    with pytest.raises(GrammarError):
        grammar.value_range(grammar.new_states(1)[0])


def test_accepts_rejects_broken_sequences(grammar: Grammar) -> None:
    rng = np.random.default_rng(11)
    seq, _ = random_walk(grammar, rng)
    assert grammar.accepts(seq)
    assert not grammar.accepts(TokenSequence(seq.tokens[:-1], seq.values[:-1]))
    assert not grammar.accepts(TokenSequence(seq.tokens + [VOCAB.end], seq.values + [math.nan]))
    values = list(seq.values)
    values[0] = 1.0  # a value on a token that is not <num>
    assert not grammar.accepts(TokenSequence(seq.tokens, values))
    index, reason = grammar.first_rejection(TokenSequence(seq.tokens[:-1], seq.values[:-1]))
    assert index == len(seq) - 1 and "ends early" in reason


# ---------------------------------------------------------------- slow reference check


class Reference:
    """Brute-force "can this prefix be completed", over explicit positions, no tables."""

    def __init__(self, max_sites: int) -> None:
        self.max_sites = max_sites

    def completable(
        self, group: int, known: tuple[int, ...], unknown: int, used: frozenset, budget: int
    ) -> bool:
        ps = TABLE[group]
        mults = [p.multiplicity for p in ps]
        n_free = [p.n_free for p in ps]
        if any(c > VOCAB.max_count for c in known) or budget < 0:
            return False
        if unknown:
            # an element whose count is still open: at least one site, any position; try each
            # position for the first unknown element, recursively
            if unknown > budget:
                return False
            for p in range(len(mults)):
                if n_free[p] == 0 and p in used:
                    continue
                new_used = used | {p} if n_free[p] == 0 else used
                if self.completable(group, known, unknown - 1, new_used, budget - 1):
                    return True
            return False
        return brute_min_cost(mults, n_free, list(known), used, budget)

    def arity_ok(self, k: int) -> bool:
        return any(self.completable(g, (), k, frozenset(), self.max_sites) for g in (2, 47, 221))

    def count_ok(self, prefix: tuple[int, ...], c: int, arity: int) -> bool:
        unknown = arity - len(prefix) - 1
        return any(
            self.completable(g, prefix + (c,), unknown, frozenset(), self.max_sites) for g in range(2, 231)
        )

    def group_ok(self, counts: tuple[int, ...], g: int) -> bool:
        return g != 1 and self.completable(g, counts, 0, frozenset(), self.max_sites)

    def site_ok(self, state: GrammarState, p: int, element_index: int | None) -> bool:
        pos = TABLE[state.group][p]
        used = {q for q in range(len(TABLE[state.group])) if state.used_fixed >> q & 1}
        if pos.n_free == 0 and p in used:
            return False
        budget = self.max_sites - state.n_sites - 1
        choices = range(len(state.remaining)) if element_index is None else [element_index]
        for i in choices:
            rest = list(state.remaining)
            if rest[i] < pos.multiplicity:
                continue
            rest[i] -= pos.multiplicity
            new_used = used | {p} if pos.n_free == 0 else used
            rest_nonzero = tuple(r for r in rest if r)
            if self.completable(state.group, rest_nonzero, 0, frozenset(new_used), budget):
                return True
        return False


@pytest.mark.parametrize("max_sites", [4, 15])
def test_masks_agree_with_brute_force(max_sites: int) -> None:
    # the reachability of counts, exactly; canonical site blocks narrow the last sites further
    # (tested on their own below)
    grammar = Grammar(max_sites=max_sites, canonical_sites=False)
    ref = Reference(max_sites)
    rng = np.random.default_rng(100 + max_sites)
    v = VOCAB
    checked = {"arity": 0, "count": 0, "group": 0, "site": 0, "site_element": 0}
    for k in range(1, v.max_arity + 1):  # arity tokens
        allowed = bool(grammar.mask(grammar.new_states(1)[0])[v.arity(k)])
        assert allowed == ref.arity_ok(k), k
        checked["arity"] += 1
    n_prefixes = 40 if max_sites == 4 else 14
    for _ in range(n_prefixes):
        seq, _ = random_walk(grammar, rng)
        # stop at a random point of the composition, group or sites blocks
        cut = int(rng.integers(1, len(seq)))
        state = grammar.new_states(1)[0]
        for t, x in zip(seq.tokens[:cut], seq.values[:cut], strict=True):
            grammar.advance(state, t, x)
        mask = grammar.mask(state)
        kind = v.kind(int(np.flatnonzero(mask)[0]))
        if state.counts and len(state.counts) < state.arity and kind == "element":
            continue
        if kind == "count":
            prefix = tuple(state.counts)
            sample = set(rng.integers(1, v.max_count + 1, size=12).tolist()) | {1, 2, 3, 4, 6, 8, 12, 24, 48}
            if max_sites == 15:
                sample = set(list(sample)[:8])
            for c in sorted(sample):
                assert mask[v.count(c)] == ref.count_ok(prefix, c, state.arity), (prefix, c, state.arity)
                checked["count"] += 1
        elif kind == "spacegroup":
            counts = tuple(state.counts)
            groups = range(1, 231) if max_sites == 4 else rng.choice(np.arange(1, 231), 40, replace=False)
            for g in groups:
                assert mask[v.spacegroup(int(g))] == ref.group_ok(counts, int(g)), (counts, g)
                checked["group"] += 1
        elif kind == "wyckoff":
            for p, pos in enumerate(TABLE[state.group]):
                token = v.wyckoff(state.group, pos.letter)
                assert mask[token] == ref.site_ok(state, p, None), (state, pos.letter)
                checked["site"] += 1
        elif kind == "element" and state.pending >= 0:
            for i, z in enumerate(state.elements):
                assert mask[v.element(z)] == ref.site_ok(state, state.pending, i), (state, z)
                checked["site_element"] += 1
    assert checked["site"] > 20 and checked["arity"] == 8, checked
    if max_sites == 4:  # enough prefixes to meet every kind of decision
        assert all(n > 0 for n in checked.values()), checked


def test_tables_agree_with_brute_force() -> None:
    tables = reach_tables()
    rng = np.random.default_rng(5)
    for _ in range(1500):
        g = int(rng.integers(2, 231))
        reach = tables.groups[g]
        k = int(rng.integers(1, 5))
        counts = [int(rng.choice(reach.mults)) * int(rng.integers(1, 4)) for _ in range(k)]
        counts = [c for c in counts if c <= VOCAB.max_count] or [1]
        fixed = [p for p, nf in enumerate(reach.n_free) if nf == 0]
        used = frozenset(rng.choice(fixed, int(rng.integers(0, len(fixed) + 1)), replace=False).tolist())
        budget = int(rng.integers(1, 11))
        fast = reach.min_cost(counts, reach.avail_index(sorted(used))) <= budget
        assert fast == brute_min_cost(reach.mults, reach.n_free, counts, used, budget), (
            g,
            counts,
            used,
            budget,
        )


# ---------------------------------------------------------------- real sequences


def _real_sequences(limit: int | None):
    from matra_hpc.data.demo import iter_flla
    from matra_hpc.tokens import EncodeError

    for rec in iter_flla(limit=limit):
        try:
            yield rec.material_id, encode(rec.structure, rec.properties)
        except EncodeError:
            continue


def _check_real(limit: int | None) -> int:
    grammar = Grammar()
    n = 0
    for material_id, seq in _real_sequences(limit):
        rejection = grammar.first_rejection(seq)
        assert rejection is None, (material_id, rejection, [VOCAB.token_str(t) for t in seq.tokens])
        n += 1
    return n


@pytest.mark.skipif(encode is None, reason="encode is not committed yet")
def test_real_sequences_accepted_sample() -> None:
    assert _check_real(150) > 100


@pytest.mark.skipif(encode is None, reason="encode is not committed yet")
def test_augmented_real_sequences_accepted() -> None:
    """Augmentation permutes element and site order; the grammar accepts any order."""
    from matra_hpc.data.demo import iter_flla
    from matra_hpc.tokens import EncodeError

    grammar = Grammar()
    rng = np.random.default_rng(4)
    n = 0
    for rec in iter_flla(limit=80):
        try:
            canonical = encode(rec.structure, rec.properties)
            augmented = encode(rec.structure, rec.properties, augment_rng=rng)
        except EncodeError:
            continue
        for seq in (canonical, augmented):
            assert grammar.first_rejection(seq) is None, (rec.material_id, grammar.first_rejection(seq))
        n += canonical.tokens != augmented.tokens
    assert n > 20  # augmentation did reorder most of them


@pytest.mark.slow
@pytest.mark.skipif(encode is None, reason="encode is not committed yet")
def test_real_sequences_accepted_whole_demo_set() -> None:
    assert _check_real(None) > 3000


def test_values_on_special_positions_or_atoms_are_refused(grammar: Grammar) -> None:
    state = grammar.new_states(1)[0]
    for t in (VOCAB.arity(1), VOCAB.element(29), VOCAB.count(96), VOCAB.spacegroup(221)):
        grammar.advance(state, t)
    general = TABLE[221][-1]
    assert general.n_free == 3 and general.multiplicity == 48
    grammar.advance(state, VOCAB.wyckoff(221, general.letter))
    grammar.advance(state, VOCAB.element(29))
    assert not grammar.value_allowed(state, 0.5)  # on the mirror plane x = 1/2
    assert not grammar.value_allowed(state, 0.99995)  # within a hair of x = 0
    with pytest.raises(GrammarError, match="special position"):
        grammar.advance(state.copy(), VOCAB.num, 0.5)
    free = (0.11, 0.27, 0.38)
    for x in free:
        grammar.advance(state, VOCAB.num, x)
    grammar.advance(state, VOCAB.wyckoff(221, general.letter))
    grammar.advance(state, VOCAB.element(29))
    grammar.advance(state, VOCAB.num, 0.11)
    grammar.advance(state, VOCAB.num, 0.27)
    assert not grammar.value_allowed(state, 0.38)  # the very atoms of the first site
    assert grammar.value_allowed(state, 0.41)


@pytest.mark.skipif(decode is None, reason="decode is not committed yet")
def test_grammar_tolerance_covers_decode() -> None:
    import importlib

    from matra_hpc.tokens.grammar import COINCIDE_TOL

    decode_module = importlib.import_module("matra_hpc.tokens.decode")
    # the shortcut in Grammar._orbit_clear needs a factor 2, plus room for rounding
    assert COINCIDE_TOL >= 2.5 * decode_module._COINCIDE


def test_vectorised_count_costs_equal_per_group_frontiers() -> None:
    tables = reach_tables()
    rng = np.random.default_rng(8)
    for _ in range(25):
        prefix = tuple(sorted(int(x) for x in rng.integers(1, 60, size=int(rng.integers(0, 4)))))
        costs = tables.count_costs(prefix)
        for gi in rng.choice(len(tables.group_ids), 12, replace=False):
            reach = tables.groups[int(tables.group_ids[gi])]
            for c in rng.integers(1, VOCAB.max_count + 1, size=15):
                want = min(reach.min_cost(prefix + (int(c),), reach.full), 10_000)
                assert min(int(costs[c, gi]), 10_000) == want, (prefix, reach.group, c)


def test_orbits_are_group_images_of_their_first_point() -> None:
    """What Grammar._orbit_clear relies on: each listed orbit is G applied to its first point,
    and the group's rotations stretch fractional distances by at most 2."""
    from matra_hpc.tokens.wyckoff import position_ops

    rng = np.random.default_rng(9)
    for g, positions in TABLE.items():
        ops = position_ops(g)
        general = ops[-1].ops
        assert np.abs(general[:, :, :3]).sum(axis=2).max() <= 2.0
        for i in range(len(positions)):
            seed = np.zeros(3)
            seed[list(ops[i].free_axes)] = rng.random(len(ops[i].free_axes))
            points = np.mod(ops[i].ops[:, :, :3] @ seed + ops[i].ops[:, :, 3], 1.0)
            images = np.mod(general[:, :, :3] @ points[0] + general[:, :, 3], 1.0)
            d = points[:, None, :] - images[None, :, :]
            d -= np.rint(d)
            close = np.all(np.abs(d) < 1e-9, axis=-1)
            assert close.any(axis=1).all() and close.any(axis=0).all(), (g, positions[i].letter)


# ---------------------------------------------------------------- canonical site blocks


def test_site_block_group_finds_the_larger_group_of_a_site_block() -> None:
    from matra_hpc.tokens.grammar import site_block_group

    def at(group: int, letter: str) -> int:
        return next(i for i, p in enumerate(TABLE[group]) if p.letter == letter)

    # Fm-3m 4a + 4b of one element: a primitive cubic cell of half the edge (Pm-3m)
    assert site_block_group(225, [(at(225, "a"), 0), (at(225, "b"), 0)]) == 221
    assert site_block_group(225, [(at(225, "a"), 0), (at(225, "b"), 1)]) == 225  # rock salt
    # P6_3/mmc: 2a alone is (0,0,0), (0,0,1/2), a translation more (P6/mmm); 2c is hcp
    assert site_block_group(194, [(at(194, "a"), 0)]) == 191
    assert site_block_group(194, [(at(194, "c"), 0)]) == 194
    assert site_block_group(14, [(at(14, "e"), 0)]) == 14  # a general position keeps its group


def test_last_site_never_makes_a_larger_group_unless_nothing_else_is_left() -> None:
    """ARITY_1 X N_2 SG_194: the two atoms may go on 2a, 2b, 2c or 2d by counts alone; 2a and 2b
    make P6/mmm with half the c axis, so canonical site blocks leave 2c and 2d."""
    letters = {}
    for canonical in (True, False):
        grammar = Grammar(canonical_sites=canonical)
        state = grammar.new_states(1)[0]
        for t in (VOCAB.arity(1), VOCAB.element(30), VOCAB.count(2), VOCAB.spacegroup(194)):
            grammar.advance(state, t)
        allowed = np.flatnonzero(grammar.mask(state))
        letters[canonical] = sorted(p.letter for p in TABLE[194] if VOCAB.wyckoff(194, p.letter) in allowed)
    assert letters[False] == ["a", "b", "c", "d"]
    assert letters[True] == ["c", "d"]
    # Fm-3m, 8 atoms of one element after 4a: only 4b can take the last 4, and 4a + 4b is Pm-3m;
    # the rule yields rather than leave no token at all
    grammar = Grammar()
    state = grammar.new_states(1)[0]
    for t in (VOCAB.arity(1), VOCAB.element(8), VOCAB.count(8), VOCAB.spacegroup(225), VOCAB.wyckoff(225, "a"),
              VOCAB.element(8)):
        grammar.advance(state, t)
    allowed = np.flatnonzero(grammar.mask(state))
    assert [p.letter for p in TABLE[225] if VOCAB.wyckoff(225, p.letter) in allowed] == ["b"]
