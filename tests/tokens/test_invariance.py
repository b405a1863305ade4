"""Canonical invariance: equivalent descriptions of one crystal give one sequence.

Supercells, other primitive bases, origin shifts, rotations, permuted sites and the
alternatives of the group's normaliser (re-described from the canonical cell) must all give
the same discrete tokens and the same values within 1e-5.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from matra_hpc.tokens import encode
from matra_hpc.tokens.encode import conventional_cell, describe
from matra_hpc.tokens.roundtrip import same_sequence
from matra_hpc.tokens.wyckoff import group_setting


def _sample_flla(n: int = 40, seed: int = 7) -> list:
    """A deterministic sample of encodable flla structures covering many groups."""
    from matra_hpc.data.demo import iter_flla
    from matra_hpc.tokens import EncodeError

    records = list(iter_flla(1200))
    rng = np.random.default_rng(seed)
    picked, groups = [], set()
    for i in rng.permutation(len(records)):
        s = records[int(i)].structure
        if len(s) > 16:
            continue
        try:
            g = describe(s).group
        except EncodeError:
            continue
        if g in groups and len(picked) >= n // 2:
            continue
        groups.add(g)
        picked.append((records[int(i)].material_id, s))
        if len(picked) >= n:
            break
    return picked


SAMPLE = _sample_flla()


def _same(a, b) -> bool:
    return same_sequence(encode(a), encode(b), tol=1e-5)


@pytest.mark.parametrize("mid, structure", SAMPLE, ids=[m for m, _ in SAMPLE])
def test_equivalent_descriptions_give_one_sequence(mid, structure):
    rng = np.random.default_rng(zlib.crc32(mid.encode()))
    variants = {}
    variants["supercell"] = structure.copy().make_supercell([[2, 0, 0], [0, 1, 0], [0, 0, 1]])
    variants["basis"] = structure.copy().make_supercell([[1, 1, 0], [0, 1, 0], [0, 1, 1]])
    shifted = structure.copy()
    shifted.translate_sites(list(range(len(shifted))), rng.uniform(0, 1, 3), frac_coords=True)
    variants["origin"] = shifted
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    variants["rotation"] = Structure(
        Lattice(structure.lattice.matrix @ q.T), structure.species, structure.frac_coords
    )
    order = rng.permutation(len(structure))
    variants["permutation"] = Structure(
        structure.lattice, [structure.species[i] for i in order], structure.frac_coords[order]
    )
    for name, variant in variants.items():
        assert _same(structure, variant), name


@pytest.mark.parametrize("mid, structure", SAMPLE[:20], ids=[m for m, _ in SAMPLE[:20]])
def test_normaliser_alternatives_give_one_sequence(mid, structure):
    description = describe(structure)
    matrix, frac, numbers = conventional_cell(description)
    reference = encode(structure)
    for op in group_setting(description.group).normalizer:
        moved = frac @ op[:, :3].T + op[:, 3]
        # The normaliser element re-describes the crystal: same atoms, new coordinates and basis.
        lattice = np.linalg.inv(op[:, :3]).T @ matrix
        alternative = Structure(Lattice(lattice), numbers.tolist(), moved)
        assert same_sequence(encode(alternative), reference, tol=1e-5), op


def test_rocksalt_on_4a_or_4b_and_shifted_origins():
    def nacl(shift):
        s = Structure.from_spacegroup(
            "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [(0, 0, 0), (0.5, 0.5, 0.5)]
        )
        s.translate_sites(list(range(len(s))), shift, frac_coords=True)
        return s

    ref = encode(nacl((0, 0, 0)))
    for shift in [(0.5, 0.5, 0.5), (0.25, 0.25, 0.25), (0.5, 0, 0), (0.1, 0.2, 0.3)]:
        assert encode(nacl(shift)).tokens == ref.tokens
