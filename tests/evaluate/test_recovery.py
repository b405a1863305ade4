"""Recovery matching: a held-out crystal counts once when sampled (any origin, supercell, site order)."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from stores import heusler

from matra_hpc.errors import UsageError
from matra_hpc.evaluate.recovery import HeldOut, match_recovery, parse_system


def perovskite(a: float = 3.9) -> Structure:
    return Structure(Lattice.cubic(a), ["Ca", "Ti", "O", "O", "O"],
                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def disguised(structure: Structure, seed: int) -> Structure:
    """Another origin, a 2x1x2 supercell, shuffled site order, a 3% larger cell."""
    s = structure.copy()
    s.translate_sites(list(range(len(s))), [0.17, 0.31, 0.05], frac_coords=True, to_unit_cell=True)
    s.make_supercell([2, 1, 2])
    order = np.random.default_rng(seed).permutation(len(s))
    s = Structure(s.lattice, [s[i].species for i in order], [s[i].frac_coords for i in order])
    s.scale_lattice(s.volume * 1.03)
    return s


def test_held_out_structure_is_counted_once_when_sampled_and_not_when_absent() -> None:
    held = [HeldOut("wbm:a", "CaTiO3", 221, 0.0, perovskite()), HeldOut("wbm:b", "AlCaCu2", 225, 0.0, heusler())]
    wrong_same_formula = perovskite()
    wrong_same_formula.replace(0, "Ti")
    wrong_same_formula.replace(1, "Ca")  # the same formula in another arrangement
    tetragonal = Structure(Lattice.tetragonal(3.9, 6.2), perovskite().species, perovskite().frac_coords)
    candidates = [("g:0", None), ("g:1", wrong_same_formula), ("g:2", tetragonal), ("g:3", disguised(perovskite(), 1)),
                  ("g:4", disguised(perovskite(4.0), 2)), ("g:5", Structure(Lattice.cubic(3), ["Al"], [[0, 0, 0]]))]
    result = match_recovery(held, candidates)
    assert result["n_sampled"] == 6 and result["n_held_out"] == 2 and result["n_recovered"] == 1
    (hit,) = result["recovered"]
    assert hit["held_out"] == "wbm:a" and hit["candidate"] == "g:3" and hit["at"] == 4
    assert result["missed"] == ["wbm:b"]
    assert result["curve"] == [[0, 0], [4, 1], [6, 1]]


def test_nothing_recovered_without_a_match() -> None:
    held = [HeldOut("wbm:b", "AlCaCu2", 225, 0.0, heusler())]
    result = match_recovery(held, [("g:0", perovskite())])
    assert result["n_recovered"] == 0 and result["curve"] == [[0, 0], [1, 0]]


@pytest.mark.parametrize("text", ["Al-Xx", "Al--Cu", "Al-Al", ""])
def test_bad_system_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError):
        parse_system(text)
    assert parse_system("Cu-Al-Ca") == ("Al", "Ca", "Cu")
