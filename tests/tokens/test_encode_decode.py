"""encode / decode / prototype_hash on small inline crystals, rejections and decode errors."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from pymatgen.core import DummySpecies, Lattice, Molecule, Structure

from matra_hpc.tokens import (
    REJECTION_REASONS,
    DecodeError,
    EncodeError,
    TokenSequence,
    decode,
    encode,
    load_vocab,
    prototype_hash,
)
from matra_hpc.tokens.encode import describe
from matra_hpc.tokens.hashing import prototype_text


def rocksalt(a: float = 5.64, cation: str = "Na", anion: str = "Cl", shift=(0.0, 0.0, 0.0)) -> Structure:
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(a), [cation, anion], [np.add((0, 0, 0), shift), np.add((0.5, 0.5, 0.5), shift)]
    )


def test_rocksalt_sequence_is_exactly_the_contract_layout():
    v = load_vocab()
    seq = encode(rocksalt(), {"e_above_hull": 0.0})
    assert seq.tokens == [
        v.ehull_low,
        v.arity(2),
        v.element(11),
        v.count(4),
        v.element(17),
        v.count(4),
        v.spacegroup(225),
        v.wyckoff(225, "a"),
        v.element(11),
        v.wyckoff(225, "b"),
        v.element(17),
        v.num,
        v.end,
    ]
    assert seq.continuous() == pytest.approx([5.64])
    assert sum(not math.isnan(x) for x in seq.values) == 1


def test_properties_block():
    v = load_vocab()
    assert encode(rocksalt(), {"e_above_hull": 0.075}).tokens[0] == v.ehull_low
    assert encode(rocksalt(), {"e_above_hull": 0.0751}).tokens[0] == v.ehull_high
    assert encode(rocksalt(), {"e_above_hull": float("nan")}).tokens[0] == v.arity(2)
    assert encode(rocksalt(), {"e_form": -1.0}).tokens[0] == v.arity(2)
    assert encode(rocksalt()).tokens[0] == v.arity(2)


def test_normaliser_alternative_na_on_4b_gives_the_same_sequence():
    # Na on 4b and Cl on 4a is the same crystal; the canonical form puts Na (smaller Z) on 4a.
    swapped = rocksalt(shift=(0.5, 0.5, 0.5))
    assert encode(swapped).tokens == encode(rocksalt()).tokens
    assert describe(swapped).sites[0].z == 11 and describe(swapped).sites[0].letter == "a"


def test_decode_rebuilds_the_crystal():
    from pymatgen.analysis.structure_matcher import StructureMatcher

    s = rocksalt()
    back = decode(encode(s))
    assert len(back) == 8 and back.composition.reduced_formula == "NaCl"
    assert back.lattice.a == pytest.approx(5.64)
    assert StructureMatcher().fit(s, back)


def test_wurtzite_polar_group_round_trips_and_fixes_the_origin():
    a, c, u = 3.25, 5.21, 0.382
    base = [(1 / 3, 2 / 3, 0.0), (1 / 3, 2 / 3, u)]
    s1 = Structure.from_spacegroup("P6_3mc", Lattice.hexagonal(a, c), ["Zn", "O"], base)
    shifted = [(x, y, z + 0.1234) for x, y, z in base]
    s2 = Structure.from_spacegroup("P6_3mc", Lattice.hexagonal(a, c), ["Zn", "O"], shifted)
    e1, e2 = encode(s1), encode(s2)
    assert e1.tokens == e2.tokens
    assert e1.continuous() == pytest.approx(e2.continuous(), abs=1e-9)
    # The origin along the polar axis sits on the first site (O, smaller letter order first).
    assert describe(s1).sites[0].free == (0.0,)
    assert encode(decode(e1)).continuous() == pytest.approx(e1.continuous(), abs=1e-9)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda: "not a structure", "parse_error"),
        (lambda: {"lattice": "nonsense"}, "parse_error"),
        (lambda: Molecule(["H", "H"], [[0, 0, 0], [0, 0, 0.74]]), "not_periodic"),
        (
            lambda: Structure(Lattice(np.eye(3) * 3, pbc=(True, True, False)), ["Na"], [[0, 0, 0]]),
            "not_periodic",
        ),
        (lambda: Structure(Lattice.cubic(3), ["Na"], [[float("nan"), 0, 0]]), "nan_or_inf"),
        (lambda: Structure(Lattice.cubic(3), [{"Na": 0.5, "K": 0.5}], [[0, 0, 0]]), "disordered"),
        (lambda: Structure(Lattice.cubic(3), [DummySpecies("X")], [[0, 0, 0]]), "unknown_element"),
        (lambda: Structure(Lattice.cubic(3), ["Na", "Na"], [[0, 0, 0], [0, 0, 1e-6]]), "symmetry_failed"),
        (
            lambda: Structure(
                Lattice.from_parameters(3.1, 4.3, 5.7, 71, 83, 97),
                ["Na", "Cl"],
                [[0, 0, 0], [0.31, 0.17, 0.43]],
            ),
            "spacegroup_1",
        ),
    ],
)
def test_rejections_have_exactly_one_reason(make, reason):
    with pytest.raises(EncodeError) as info:
        encode(make())
    assert info.value.reason == reason and reason in REJECTION_REASONS
    assert "\n" not in str(info.value)


def test_too_many_sites(monkeypatch):
    import importlib

    encode_module = importlib.import_module("matra_hpc.tokens.encode")

    with pytest.raises(EncodeError) as info:
        encode(rocksalt(), max_sites=1)
    assert info.value.reason == "too_many_sites"
    # The count and arity limits of the vocabulary, lowered so a small crystal crosses them.
    monkeypatch.setattr(encode_module, "MAX_COUNT", 3)
    with pytest.raises(EncodeError) as info:
        encode(rocksalt())
    assert info.value.reason == "too_many_sites" and "count 4" in str(info.value)
    monkeypatch.setattr(encode_module, "MAX_COUNT", 512)
    monkeypatch.setattr(encode_module, "MAX_ARITY", 1)
    with pytest.raises(EncodeError) as info:
        encode(rocksalt())
    assert info.value.reason == "too_many_sites" and "elements" in str(info.value)


def test_augmentation_permutes_elements_and_sites_only():
    s = Structure.from_spacegroup(
        "Pm-3m", Lattice.cubic(3.9), ["Sr", "Ti", "O"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]]
    )
    canonical = encode(s, {"e_above_hull": 0.2})
    v = load_vocab()
    seen = set()
    rng = np.random.default_rng(0)
    for _ in range(20):
        aug = encode(s, {"e_above_hull": 0.2}, augment_rng=rng)
        assert aug.tokens[0] == v.ehull_high and aug.tokens[1] == v.arity(3)
        assert sorted(aug.tokens) == sorted(canonical.tokens)
        assert aug.tokens[-2:] == canonical.tokens[-2:]
        seen.add(tuple(aug.tokens))
        assert prototype_hash(aug) == prototype_hash(canonical)
        assert encode(decode(aug)).tokens == encode(decode(canonical)).tokens == encode(s).tokens
    assert len(seen) > 1


def test_prototype_hash_ignores_values_and_properties():
    h1 = prototype_hash(encode(rocksalt(5.64), {"e_above_hull": 0.0}))
    h2 = prototype_hash(encode(rocksalt(6.1), {"e_above_hull": 0.3}))
    h3 = prototype_hash(encode(rocksalt(5.64, "K", "Cl")))
    assert h1 == h2 and h1 != h3 and h1.startswith("v2:")
    assert prototype_text(encode(rocksalt())) == "Na4.Cl4|225|a:Na.b:Cl"


def _rocksalt_seq() -> TokenSequence:
    return encode(rocksalt())


def _edited(seq: TokenSequence, index: int, token: int, value: float = math.nan) -> TokenSequence:
    tokens, values = list(seq.tokens), list(seq.values)
    tokens[index], values[index] = token, value
    return TokenSequence(tokens, values)


def test_decode_errors_name_the_first_bad_token():
    v = load_vocab()
    seq = _rocksalt_seq()  # 0 ARITY, 1 Na, 2 N4, 3 Cl, 4 N4, 5 SG, 6 W, 7 Na, 8 W, 9 Cl, 10 <num>, 11 <end>
    assert len(seq) == 12
    cases = [
        (_edited(seq, 5, v.wyckoff(225, "a")), 5, "bad block order"),  # W where the group should be
        (_edited(seq, 6, v.wyckoff(2, "a")), 6, "not a position of space group 225"),
        (_edited(seq, 7, v.element(19)), 7, "not in the composition"),
        (_edited(seq, 8, v.wyckoff(225, "a")), 8, "used twice"),
        (_edited(seq, 2, v.count(3)), 6, "exceeds"),
        (_edited(seq, 10, v.num, math.nan), 10, "missing"),
        (_edited(seq, 10, v.num, -5.0), 10, "non-physical"),
        (_edited(seq, 11, v.num, 1.0), 11, "expected <end>"),
        (TokenSequence(seq.tokens[:-1], seq.values[:-1]), 11, "ends"),
        (TokenSequence(seq.tokens + [v.end], seq.values + [math.nan]), 12, "after <end>"),
        (_edited(seq, 0, v.spacegroup(3)), 0, "bad block order"),
        (_edited(seq, 2, v.element(3)), 2, "expected a count"),
    ]
    for bad, position, why in cases:
        with pytest.raises(DecodeError) as info:
            decode(bad)
        assert info.value.position == position, (why, str(info.value))
        assert why in str(info.value)


def test_decode_rejects_a_collapsed_orbit():
    v = load_vocab()
    # 225e (x,0,0) with x = 0 is the point 4a: its 24 points collapse.
    seq = TokenSequence(
        [
            v.arity(1),
            v.element(11),
            v.count(24),
            v.spacegroup(225),
            v.wyckoff(225, "e"),
            v.element(11),
            v.num,
            v.num,
            v.end,
        ],
        [math.nan] * 6 + [0.0, 5.0, math.nan],
    )
    with pytest.raises(DecodeError) as info:
        decode(seq)
    assert info.value.position == 4 and "special position" in str(info.value)
    ok = TokenSequence(seq.tokens, [math.nan] * 6 + [0.23, 5.0, math.nan])
    assert len(decode(ok)) == 24


def test_demo_encode_logs_no_moyopy_warning(caplog):
    """moyopy warns about its own orbits for non-primitive input cells (mp-639774 is one in
    the demo set); encode does not use them, so the record must not reach the log."""
    import gzip
    import json

    from matra_hpc.data.demo import flla_path, structure_from_record

    with gzip.open(flla_path(), "rt") as handle:
        record = next(json.loads(line) for line in handle if '"mp-639774"' in line)
    with caplog.at_level(logging.DEBUG):
        encode(structure_from_record(record))
    assert not [r for r in caplog.records if r.name.startswith("moyo")]
