"""The Wyckoff tables and the flat vocabulary (docs/contracts.md section A)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pyxtal.symmetry import Group

from matra_hpc.tokens import TokenSequence, load_vocab, wyckoff_table
from matra_hpc.tokens.wyckoff import (
    crystal_system,
    group_setting,
    lattice_parameter_names,
    n_wyckoff_tokens,
    position_ops,
)

N_POSITIONS = 1731
N_WYCKOFF_TOKENS = 940


def _orbit_as_points(group: int, index: int, free: tuple[float, ...]) -> set[tuple[float, ...]]:
    """The orbit of a position at given free values, as a set of points mod 1 (for comparison)."""
    ops = position_ops(group)[index]
    seed = np.zeros(3)
    for axis, value in zip(ops.free_axes, free, strict=True):
        seed[axis] = value
    pts = np.einsum("mij,j->mi", ops.ops[:, :, :3], seed) + ops.ops[:, :, 3]
    return {tuple(np.round(np.mod(p, 1.0), 6) % 1.0) for p in pts}


def test_table_has_every_position_of_every_group():
    table = wyckoff_table()
    assert sorted(table) == list(range(1, 231))
    assert sum(len(ps) for ps in table.values()) == N_POSITIONS
    for ps in table.values():
        assert [p.index for p in ps] == list(range(len(ps)))
        assert [p.letter for p in ps][0] == "a"
        # ITA letter order: the general position (largest multiplicity, 3 free values) is last.
        assert ps[-1].n_free == 3 and ps[-1].multiplicity == max(p.multiplicity for p in ps)


def test_tables_equal_pyxtal_groups():
    """Our direct read of pyxtal's database equals what pyxtal.symmetry.Group builds."""
    from pyxtal.symmetry import pyxtal_hall_numbers

    for g, ps in wyckoff_table().items():
        pyx = list(reversed(Group(g).Wyckoff_positions))
        assert [p.letter for p in ps] == [w.letter for w in pyx]
        assert [p.multiplicity for p in ps] == [w.multiplicity for w in pyx]
        assert [p.n_free for p in ps] == [w.get_dof() for w in pyx]
        for ops, w in zip(position_ops(g), pyx, strict=True):
            theirs = np.array([op.affine_matrix[:3] for op in w.ops])
            theirs[:, :, 3] = np.mod(theirs[:, :, 3], 1.0)
            assert np.allclose(ops.ops, theirs)
        assert group_setting(g).hall_number == pyxtal_hall_numbers[g - 1]
    assert wyckoff_table()[225][0].multiplicity == 4 and wyckoff_table()[225][-1].multiplicity == 192


def test_token_count_is_pinned():
    assert n_wyckoff_tokens() == N_WYCKOFF_TOKENS
    tokens = {p.token_index for ps in wyckoff_table().values() for p in ps}
    assert tokens == set(range(N_WYCKOFF_TOKENS))


def test_positions_share_a_token_only_when_their_orbits_are_equal():
    table = wyckoff_table()
    free = (0.1234, 0.3571, 0.6180)
    by_token: dict[int, list] = {}
    for ps in table.values():
        for p in ps:
            by_token.setdefault(p.token_index, []).append(p)
    shared = 0
    for members in by_token.values():
        first = members[0]
        orbit = _orbit_as_points(first.group, first.index, free[: first.n_free])
        for p in members[1:]:
            shared += 1
            assert p.orbit_key == first.orbit_key
            assert p.multiplicity == first.multiplicity and p.n_free == first.n_free
            assert _orbit_as_points(p.group, p.index, free[: p.n_free]) == orbit
    assert shared == N_POSITIONS - N_WYCKOFF_TOKENS
    # Distinct tokens are distinct orbits (as point sets at generic free values).
    seen = {}
    for token, members in by_token.items():
        p = members[0]
        key = (p.n_free, frozenset(_orbit_as_points(p.group, p.index, free[: p.n_free])))
        assert key not in seen, (token, seen.get(key))
        seen[key] = token


def test_example_of_the_issue_shares_one_token():
    vocab = load_vocab()
    assert vocab.wyckoff(10, "i") == vocab.wyckoff(16, "m") == vocab.wyckoff(47, "m")
    assert vocab.wyckoff(225, "a") != vocab.wyckoff(225, "b")


def test_vocab_layout_matches_the_contract():
    v = load_vocab()
    assert (v.pad, v.bos, v.end, v.num, v.ehull_low, v.ehull_high) == (0, 1, 2, 3, 4, 5)
    assert v.arity_range == (6, 14) and v.max_arity == 8
    assert v.element_range == (14, 132)
    assert v.count_range == (132, 644) and v.max_count == 512
    assert v.spacegroup_range == (644, 874)
    assert v.wyckoff_range == (874, 874 + N_WYCKOFF_TOKENS)
    assert v.size == 874 + N_WYCKOFF_TOKENS
    assert v.token_str(v.element(26)) == "Fe" and v.element_of(v.element(26)) == 26
    assert v.token_str(v.count(512)) == "N_512" and v.count_of(v.count(3)) == 3
    assert v.token_str(v.spacegroup(225)) == "SG_225" and v.spacegroup_of(v.spacegroup(1)) == 1
    assert v.arity_of(v.arity(8)) == 8
    kinds = [v.kind(t) for t in range(v.size)]
    assert kinds.count("special") == 4 and kinds.count("property") == 2
    assert kinds.count("wyckoff") == N_WYCKOFF_TOKENS
    with pytest.raises(ValueError):
        v.kind(v.size)
    with pytest.raises(ValueError):
        v.count(513)
    with pytest.raises(ValueError):
        v.wyckoff(225, "z")


def test_wyckoff_of_round_trips_every_position():
    v = load_vocab()
    for g, ps in wyckoff_table().items():
        for p in ps:
            assert v.wyckoff_of(g, v.wyckoff(g, p.letter)) == p
    # A token whose orbit does not exist in the group.
    assert v.wyckoff_of(2, v.wyckoff(225, "a")) is None


def test_vocab_json_and_hash_are_deterministic():
    import hashlib
    import json

    v = load_vocab()
    data = v.to_json()
    again = json.loads(json.dumps(data))
    assert (
        hashlib.sha256(json.dumps(again, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        == v.hash
    )
    assert len(data["wyckoff_orbits"]) == N_WYCKOFF_TOKENS and all(data["wyckoff_orbits"])


def test_crystal_systems_and_lattice_parameters():
    assert crystal_system(2) == "triclinic" and lattice_parameter_names(2) == (
        "a",
        "b",
        "c",
        "alpha",
        "beta",
        "gamma",
    )
    assert lattice_parameter_names(14) == ("a", "b", "c", "beta")
    assert lattice_parameter_names(62) == ("a", "b", "c")
    assert lattice_parameter_names(139) == ("a", "c")
    assert crystal_system(166) == "trigonal" and lattice_parameter_names(166) == ("a", "c")
    assert lattice_parameter_names(194) == ("a", "c")
    assert lattice_parameter_names(225) == ("a",)
    with pytest.raises(ValueError):
        crystal_system(231)


def test_normaliser_letter_maps_agree_with_pyxtal_table():
    """Our images of each position under each normaliser coset are pyxtal's listed pre-images
    under the inverse coset, i.e. the two tables describe the same permutations (ours holds
    more cosets where pyxtal's list is not closed, see the next test)."""
    import json
    from importlib import resources

    sets = json.loads(resources.files("pyxtal").joinpath("database/wyckoff_sets.json").read_text())
    for g in range(1, 231):
        setting = group_setting(g)
        letters = [p.letter for p in wyckoff_table()[g]]
        listed = [dict(zip(letters, row.split(), strict=True)) for row in sets[str(g)]["Transformed WP"]]
        ours = [frozenset(m.items()) for m in setting.normalizer_letters]
        # pyxtal lists, at each letter, the letter that the coset maps onto it.
        theirs = {frozenset({t[letter]: letter for letter in letters}.items()) for t in listed}
        assert theirs <= set(ours), g
        assert len(setting.normalizer) >= len(listed) - (g == 19), g  # 19 lists two cosets twice
        assert all(set(m.values()) == set(letters) for m in setting.normalizer_letters)


@pytest.mark.parametrize("group", [2, 14, 19, 44, 45, 62, 80, 166, 225, 227])
def test_normaliser_cosets_are_closed_and_distinct(group):
    """The alternatives are the cosets of a group: products of two representatives fall in a
    listed coset and no coset is listed twice (pyxtal's table misses cosets of 44, 45, 80 and
    repeats two of 19, so alternatives depended on the cell spglib started from)."""
    from matra_hpc.tokens.wyckoff import _compose, _coset_keys, position_ops

    general = position_ops(group)[-1].ops
    reps = group_setting(group).normalizer
    keys = _coset_keys(reps, general)
    assert len(set(keys)) == len(keys)
    assert set(_coset_keys(_compose(reps, reps), general)) == set(keys)
    expected = {44: 16, 45: 16, 80: 8, 19: 96}
    if group in expected:
        assert len(reps) == expected[group]


def test_token_sequence_json_round_trip():
    seq = TokenSequence([5, 3, 2], [math.nan, 0.25, math.nan])
    back = TokenSequence.from_json(seq.to_json())
    assert back.tokens == seq.tokens and back.values[1] == 0.25 and math.isnan(back.values[0])
    with pytest.raises(ValueError):
        TokenSequence([1, 2], [math.nan])


def test_spacegroup_in_a_sequence() -> None:
    from matra_hpc.tokens import load_vocab

    vocab = load_vocab()
    assert vocab.spacegroup_in([1, vocab.spacegroup(225), vocab.spacegroup(2)]) == 225
    assert vocab.spacegroup_in([1, 2]) == 0
