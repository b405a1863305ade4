"""Generation conditions: parsing, refusal of impossible ones, and 100% honoured by the grammar."""

from __future__ import annotations

import math
from functools import reduce

import numpy as np
import pytest

from matra_hpc.errors import MatraError
from matra_hpc.tokens import TokenSequence, load_vocab, wyckoff_table
from matra_hpc.tokens._reachability import brute_min_cost, reach_tables
from matra_hpc.tokens.conditions import Condition, ConditionError, check_condition
from matra_hpc.tokens.grammar import Grammar

try:
    from matra_hpc.tokens import decode
except ImportError:  # pragma: no cover - only before the decoder is committed
    decode = None

VOCAB = load_vocab()
TABLE = wyckoff_table()


def walk(grammar: Grammar, rng: np.random.Generator) -> TokenSequence:
    state = grammar.new_states(1)[0]
    tokens, values = [], []
    while not grammar.is_complete(state):
        allowed = np.flatnonzero(grammar.mask(state))
        assert allowed.size, f"dead end after {[VOCAB.token_str(t) for t in tokens]}"
        token = int(rng.choice(allowed))
        value = math.nan
        if token == VOCAB.num:
            lo, hi = grammar.value_range(state)
            value = float(rng.uniform(lo, hi))
            while not grammar.value_allowed(state, value):
                value = float(rng.uniform(lo, hi))
        grammar.advance(state, token, value)
        tokens.append(token)
        values.append(value)
    return TokenSequence(tokens, values)


def blocks(seq: TokenSequence) -> dict:
    v, toks = VOCAB, seq.tokens
    props = [t for t in toks if v.kind(t) == "property"]
    elements = [v.element_symbols[v.element_of(t) - 1] for t in toks if v.kind(t) == "element"]
    k = v.arity_of(next(t for t in toks if v.kind(t) == "arity"))
    composition = dict(zip(elements[:k], [v.count_of(t) for t in toks if v.kind(t) == "count"], strict=True))
    group = v.spacegroup_of(next(t for t in toks if v.kind(t) == "spacegroup"))
    positions = [v.wyckoff_of(group, t) for t in toks if v.kind(t) == "wyckoff"]
    return {"props": props, "composition": composition, "group": group, "positions": positions}


# ---------------------------------------------------------------- parsing


def test_parse_cli_syntax() -> None:
    cond = Condition.parse("elements=Al,Ca,Cu;spacegroups=191,194;stability=low")
    assert cond == Condition(stability="low", elements=("Al", "Ca", "Cu"), spacegroups=(191, 194))
    assert Condition.parse("composition=Al2CaCu").composition == {"Al": 2, "Ca": 1, "Cu": 1}
    assert Condition.parse("composition=Al:2, Ca:1,Cu:1").composition == {"Al": 2, "Ca": 1, "Cu": 1}
    assert Condition.parse("wyckoff=225:4a,225:8c").wyckoff == ("225:4a", "225:8c")
    assert Condition.parse("") == Condition()


@pytest.mark.parametrize(
    "spec",
    ["colour=red", "elements", "spacegroups=a,b", "composition=Al2x", "stability=low;stability=high"],
)
def test_parse_refuses_bad_syntax(spec: str) -> None:
    with pytest.raises(ConditionError):
        Condition.parse(spec)


# ---------------------------------------------------------------- impossible conditions


@pytest.mark.parametrize(
    ("cond", "message"),
    [
        (Condition(elements=("Al", "Xx")), "unknown element 'Xx'"),
        (Condition(composition={"Fe": 1, "Qq": 2}), "unknown element 'Qq'"),
        (Condition(spacegroups=(0,)), "outside 1..230"),
        (Condition(spacegroups=(231,)), "outside 1..230"),
        (Condition(spacegroups=(1,)), "never encoded"),
        (Condition(stability="medium"), "stability"),
        (Condition(wyckoff=("225:4z",)), "has no position 'z'"),
        (Condition(wyckoff=("225:8a",)), "multiplicity 4, not 8"),
        (Condition(wyckoff=("225:4a", "225:4a")), "no free parameter"),
        (Condition(wyckoff=("4a",)), "names no space group"),
        (Condition(spacegroups=(221,), wyckoff=("225:4a",)), "none of them allowed"),
        (Condition(elements=tuple("H He Li Be B C N O F".split())), "at most 8"),
        (Condition(elements=("Fe", "O"), composition={"Fe": 1, "Ni": 1}), "different elements"),
        (Condition(composition={"Fe": 1, "O": 600}), "cannot be realised"),
        (Condition(composition={"Fe": 0}), "positive integer"),
    ],
)
def test_impossible_conditions_are_refused(cond: Condition, message: str) -> None:
    with pytest.raises(ConditionError, match=message) as info:
        check_condition(cond)
    assert isinstance(info.value, MatraError) and "\n" not in str(info.value)
    with pytest.raises(ConditionError):
        Grammar(condition=cond)


def test_unrealisable_composition_refused_and_brute_force_agrees() -> None:
    # Fe5O7 in Pm-3m within 4 Wyckoff sites: no multiple fits (checked by exhaustive search)
    cond = Condition(composition={"Fe": 5, "O": 7}, spacegroups=(221,))
    with pytest.raises(ConditionError, match="cannot be realised"):
        check_condition(cond, max_sites=4)
    reach = reach_tables().groups[221]
    assert not any(
        brute_min_cost(reach.mults, reach.n_free, [5 * m, 7 * m], frozenset(), 4)
        for m in range(1, VOCAB.max_count // 7 + 1)
    )
    check_condition(cond, max_sites=15)  # possible with more sites
    with pytest.raises(ConditionError, match="fits 3 elements"):
        check_condition(Condition(elements=("Al", "Ca", "Cu")), max_sites=2)


# ---------------------------------------------------------------- conditions honoured


CONDITIONS = [
    Condition(stability="low", elements=("Al", "Ca", "Cu"), spacegroups=(191, 194)),
    Condition(stability="high", composition={"Na": 1, "Cl": 1}),
    Condition(composition={"Ba": 1, "Ti": 1, "O": 3}, spacegroups=(221, 99)),
    Condition(elements=("Li", "O"), wyckoff=("225:4a", "225:8c")),
    Condition(spacegroups=(225,), wyckoff=("4b",)),
    Condition(wyckoff=("194:2a", "191:1a", "191:2c")),
    Condition(elements=("Si", "O"), wyckoff=("227:32e", "227:32e")),
    Condition(composition={"Fe": 2, "O": 4}, spacegroups=(12, 15, 62)),
]


def _honours(cond: Condition, seq: TokenSequence) -> None:
    b = blocks(seq)
    if cond.stability is not None:
        expected = VOCAB.ehull_low if cond.stability == "low" else VOCAB.ehull_high
        assert b["props"] == [expected] and seq.tokens[0] == expected
    if cond.elements is not None:
        assert set(b["composition"]) == set(cond.elements)
    if cond.composition is not None:
        got, want = b["composition"], cond.composition
        assert set(got) == set(want)
        divisor = reduce(math.gcd, want.values())
        ratio = {got[el] * divisor / want[el] for el in want}
        assert len(ratio) == 1 and float(next(iter(ratio))).is_integer()
    groups = set(cond.spacegroups) if cond.spacegroups is not None else set(range(2, 231))
    required: dict[int, list[str]] = {}
    for label in cond.wyckoff or ():
        g, _, pos = label.rpartition(":")
        g = int(g) if g else cond.spacegroups[0]
        required.setdefault(g, []).append(pos[-1])
    if cond.wyckoff is not None:
        groups &= set(required)
    assert b["group"] in groups
    letters = [p.letter for p in b["positions"]]
    for letter in set(required.get(b["group"], [])):
        assert letters.count(letter) >= required[b["group"]].count(letter)


@pytest.mark.parametrize("index", range(len(CONDITIONS)))
def test_conditioned_walks_honour_the_condition(index: int) -> None:
    cond = CONDITIONS[index]
    check_condition(cond)
    grammar = Grammar(condition=cond)
    rng = np.random.default_rng(1000 + index)
    seen_groups = set()
    for i in range(60):
        seq = walk(grammar, rng)
        assert grammar.accepts(seq)
        _honours(cond, seq)
        seen_groups.add(blocks(seq)["group"])
        if decode is not None and i % 3 == 0:
            decode(seq)
    if cond.spacegroups is not None and len(cond.spacegroups) > 1 and cond.wyckoff is None:
        assert len(seen_groups) > 1  # the condition narrows, it does not collapse to one group


def test_unconditioned_grammar_refuses_what_a_condition_forbids() -> None:
    grammar = Grammar(condition=Condition(elements=("Na", "Cl"), stability="low"))
    mask = grammar.mask(grammar.new_states(1)[0])
    assert mask.sum() == 1 and mask[VOCAB.ehull_low]
    state = grammar.new_states(1)[0]
    grammar.advance(state, VOCAB.ehull_low)
    mask = grammar.mask(state)
    assert np.flatnonzero(mask).tolist() == [VOCAB.arity(2)]
    grammar.advance(state, VOCAB.arity(2))
    assert {VOCAB.element_of(t) for t in np.flatnonzero(grammar.mask(state))} == {11, 17}


# ---------------------------------------------------------------- required positions vs brute force


def _brute_required(
    group: int, counts, unknown: int, used: frozenset, required: list[int], budget: int
) -> bool:
    """Exhaustive search: place counts, then ``unknown`` new elements, covering ``required``."""
    ps = TABLE[group]
    mults = [p.multiplicity for p in ps]
    fixed = [p.n_free == 0 for p in ps]

    memo: dict = {}
    max_mult = max(mults)

    def search(rest, unknown, open_count, used, req, left, start):
        if not any(rest) and unknown == 0:
            return not req
        if left <= 0 or sum(rest) > left * max_mult:
            return False
        n_known = sum(1 for c in rest if c)
        if n_known + unknown - (1 if open_count else 0) > left or len(req) > left:
            return False
        key = (rest, unknown, open_count, used, tuple(sorted(req)), left, start)
        if key not in memo:
            memo[key] = _step(rest, unknown, open_count, used, req, left, start)
        return memo[key]

    def _step(rest, unknown, open_count, used, req, left, start):
        if any(rest):
            i = next(j for j, c in enumerate(rest) if c > 0)
            candidates = [(i, p) for p in range(start, len(ps))]
        else:
            candidates = [(None, p) for p in range(len(ps))]
            if open_count:  # the open new element may stop here
                if search(rest, unknown - 1, 0, used, req, left, 0):
                    return True
        for i, p in candidates:
            m = mults[p]
            if fixed[p] and p in used:
                continue
            new_req = list(req)
            if p in new_req:
                new_req.remove(p)
            new_used = used | {p} if fixed[p] else used
            if i is not None:
                if m > rest[i]:
                    continue
                new_rest = rest[:i] + (rest[i] - m,) + rest[i + 1 :]
                nxt = p if new_rest[i] else 0
                if search(new_rest, unknown, 0, new_used, new_req, left - 1, nxt):
                    return True
            else:
                if open_count + m > VOCAB.max_count:
                    continue
                # close the new element right away, or keep it open for more positions
                if search(rest, unknown - 1, 0, new_used, new_req, left - 1, 0):
                    return True
                if unknown and search(rest, unknown, open_count + m, new_used, new_req, left - 1, 0):
                    return True
        return False

    return search(tuple(counts), unknown, 0, used, list(required), budget, 0)


def test_required_positions_agree_with_brute_force() -> None:
    tables = reach_tables()
    rng = np.random.default_rng(17)
    n = 0
    while n < 250:
        g = int(rng.integers(2, 231))
        ps = TABLE[g]
        if len(ps) < 3:
            continue
        req = sorted(int(x) for x in rng.choice(len(ps), int(rng.integers(1, 4)), replace=True))
        if any(ps[p].n_free == 0 and req.count(p) > 1 for p in req):
            continue
        counts = [
            int(rng.choice([p.multiplicity for p in ps])) * int(rng.integers(1, 3))
            for _ in range(int(rng.integers(0, 3)))
        ]
        unknown = int(rng.integers(0, 3))
        if not counts and not unknown:
            continue
        free_fixed = [p for p in range(len(ps)) if ps[p].n_free == 0 and p not in req]
        used = (
            frozenset(
                int(x)
                for x in rng.choice(free_fixed, int(rng.integers(0, len(free_fixed) + 1)), replace=False)
            )
            if free_fixed
            else frozenset()
        )
        budget = int(rng.integers(1, 7))
        rr = tables.required(g, tuple(req))
        avail = rr.reserved_avail(sorted(used), req)
        fast = rr.min_cost(counts, unknown, avail, tuple(req)) <= budget
        slow = _brute_required(g, counts, unknown, used, req, budget)
        assert fast == slow, (g, counts, unknown, sorted(used), req, budget)
        n += 1


def test_required_count_costs_match_single_queries() -> None:
    tables = reach_tables()
    for g, req, prefix, unknown in [
        (225, (0, 2), (4,), 1),
        (191, (0, 0 + 2), (), 2),
        (194, (0,), (2, 6), 0),
        (227, (4, 4), (8,), 1),
    ]:
        rr = tables.required(g, req)
        avail = rr.reserved_avail((), req)
        costs = rr.count_costs(prefix, unknown, avail, req)
        for c in range(1, VOCAB.max_count + 1):
            assert costs[c] == rr.min_cost(prefix + (c,), unknown, avail, req), (g, req, prefix, c)
