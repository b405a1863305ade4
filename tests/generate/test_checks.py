"""The bond check: the packing bound that skips the neighbour search never changes its answer."""

from __future__ import annotations

import numpy as np
from pymatgen.core import Lattice, Structure

from matra_hpc.generate.checks import min_distance_ok


def _neighbour_search(structure: Structure, min_distance: float) -> bool:
    return len(structure.get_neighbor_list(r=min_distance)[0]) == 0


def test_packing_bound_agrees_with_the_neighbour_search() -> None:
    rng = np.random.default_rng(0)
    answers = []
    for n in (1, 2, 5, 12, 40):
        # from far too dense (0.02 A^3 per atom) to roomy (30 A^3 per atom), around the bound
        for volume_per_atom in (0.02, 0.1, 0.2, 0.24, 0.3, 0.5, 1.0, 3.0, 30.0):
            edge = (volume_per_atom * n) ** (1 / 3)
            s = Structure(Lattice.cubic(edge), ["Li"] * n, rng.random((n, 3)))
            answers.append(min_distance_ok(s, 0.7))
            assert answers[-1] == _neighbour_search(s, 0.7), (n, volume_per_atom)
    assert any(answers) and not all(answers)
    # skewed and thin cells, roomy and tight, take the neighbour search or the 27-image path
    for _ in range(60):
        a, b, c = rng.uniform(0.8, 9.0, 3)
        alpha, beta, gamma = rng.uniform(60.0, 120.0, 3)
        try:
            lattice = Lattice.from_parameters(a, b, c, alpha, beta, gamma)
        except ValueError:  # angles that close no cell
            continue
        n = int(rng.integers(1, 12))
        s = Structure(lattice, ["Li"] * n, rng.random((n, 3)))
        assert min_distance_ok(s, 0.7) == _neighbour_search(s, 0.7), (lattice.parameters, n)
    # the absurd crystals an untrained model samples: hundreds of atoms in a cubic angstrom
    dense = Structure(Lattice.cubic(1.0), ["Li"] * 400, rng.random((400, 3)))
    assert not min_distance_ok(dense, 0.7)
    # hundreds of atoms in a huge cell (the grammar allows 300 A): the 27-image path
    sparse = Structure(Lattice.cubic(40.0), ["Li"] * 300, rng.random((300, 3)))
    assert min_distance_ok(sparse, 0.7) == _neighbour_search(sparse, 0.7)
    close = Structure(Lattice.cubic(300.0), ["Li", "Li"], [[0.0, 0.0, 0.0], [0.999, 0.0, 0.0]])
    assert not min_distance_ok(close, 0.7) and not _neighbour_search(close, 0.7)
