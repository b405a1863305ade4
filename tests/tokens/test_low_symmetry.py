"""Canonical form of triclinic and monoclinic crystals under hypothesis (issue 15, item 7).

Random P-1 and monoclinic crystals, some on special metrics where two cells are equally
reduced (a = b, or alpha = beta as well), are re-described with an origin shift, a 2x
supercell, another primitive basis and shuffled sites: every description must encode to the
same sequence (values within 1e-5), and each sequence must round-trip.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymatgen.core import Structure

from matra_hpc.tokens import DecodeError, EncodeError, decode, encode
from matra_hpc.tokens.encode import Description, Site, to_sequence
from matra_hpc.tokens.roundtrip import check_roundtrip, same_sequence
from matra_hpc.tokens.wyckoff import wyckoff_table

ELEMENTS = [8, 12, 14, 26]
# Proper unimodular changes of basis (rows: new vectors in old coordinates).
BASES = [
    [[1, 1, 0], [0, 1, 0], [0, 0, 1]],
    [[0, 1, 0], [0, 0, 1], [1, 0, 0]],
    [[1, 0, 1], [0, 1, 0], [0, 0, 1]],
    [[1, 0, 0], [0, 1, -1], [0, 0, 1]],
    [[-1, 0, 0], [0, 1, 1], [0, 0, -1]],
]


@st.composite
def low_symmetry(draw) -> Description:
    group = draw(st.integers(2, 15))
    table = wyckoff_table()[group]
    length = st.floats(4.0, 8.0)
    a, b, c = draw(length), draw(length), draw(length)
    tie = draw(st.sampled_from(["none", "a=b", "a=b,alpha=beta"]))
    if tie != "none":
        b = a  # equally reduced cells: the case that gave two sequences before
    if group == 2:
        alpha, beta, gamma = (draw(st.floats(75.0, 105.0)) for _ in range(3))
        if tie == "a=b,alpha=beta":
            beta = alpha
        lattice = (a, b, c, alpha, beta, gamma)
    else:
        c = a if tie != "none" else c  # a = c: two monoclinic cell choices tie
        # beta below 118: a = c with beta = 120 is a hexagonal net, whose extra lattice symmetry
        # gives settings outside the normaliser that encode does not search (a known limit).
        lattice = (a, b, c, draw(st.floats(92.0, 118.0)))
    sites, used = [], set()
    for _ in range(draw(st.integers(1, 3))):
        position = table[draw(st.sampled_from([len(table) - 1, len(table) - 1, 0, min(1, len(table) - 1)]))]
        if position.n_free == 0 and position.index in used:
            continue
        used.add(position.index)
        free = tuple(draw(st.floats(0.05, 0.95)) for _ in range(position.n_free))
        sites.append(Site(position.index, position.letter, draw(st.sampled_from(ELEMENTS)), free))
    sites.sort(key=lambda s: (s.letter_index, s.z, s.free))
    return Description(group, tuple(sites), lattice)


def _structure(description: Description) -> Structure | None:
    try:
        structure = decode(to_sequence(description))
    except DecodeError:
        return None
    distances = structure.distance_matrix[np.triu_indices(len(structure), 1)]
    return structure if len(structure) > 1 and distances.min() > 1.0 else None


@settings(
    max_examples=40,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(low_symmetry(), st.integers(0, 2**32 - 1))
def test_equivalent_low_symmetry_cells_give_one_sequence(description, seed):
    structure = _structure(description)
    if structure is None:
        return
    try:
        reference = encode(structure)
    except EncodeError:
        return  # P1 after all (a special position made it so) or too many sites
    rng = np.random.default_rng(seed)
    shifted = structure.copy()
    shifted.translate_sites(list(range(len(shifted))), rng.uniform(0, 1, 3), frac_coords=True)
    supercell = np.eye(3, dtype=int)
    supercell[rng.integers(3), rng.integers(3)] += 1
    order = rng.permutation(len(structure))
    variants = {
        "origin": shifted,
        "supercell": structure.copy().make_supercell(supercell),
        "basis": structure.copy().make_supercell(BASES[rng.integers(len(BASES))]),
        "sites": Structure(
            structure.lattice, [structure.species[i] for i in order], structure.frac_coords[order]
        ),
    }
    for name, variant in variants.items():
        assert same_sequence(encode(variant), reference, tol=1e-5), name


@settings(max_examples=15, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(low_symmetry())
def test_low_symmetry_crystals_round_trip(description):
    structure = _structure(description)
    if structure is None:
        return
    result = check_roundtrip(structure)
    assert result.ok or not result.encodable, result
