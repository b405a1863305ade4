"""Connectivity: components of the periodic bond graph (1.5 x covalent radii), Laplacian null space."""

from __future__ import annotations

import pytest
from pymatgen.core import Lattice, Structure

from matra_hpc.screen.connectivity import bond_graph, is_connected, n_components


def test_three_dimensional_networks_are_one_component():
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    si = Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.43), ["Si"], [[0, 0, 0]])
    assert n_components(nacl) == 1 and n_components(si.get_primitive_structure()) == 1
    assert is_connected(nacl)
    assert bond_graph(nacl).sum() > 0


def test_layered_crystals_two_layers_per_cell_are_disconnected():
    # graphite AB: two graphene layers 3.35 A apart, far beyond 1.5 x 2 x 0.73 A
    graphite = Structure(Lattice.hexagonal(2.46, 6.70), ["C"] * 4,
                         [[0, 0, 0.25], [0, 0, 0.75], [1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]])
    assert n_components(graphite) == 2
    # 2H-MoS2 (P6_3/mmc): two S-Mo-S sheets per cell
    mos2 = Structure.from_spacegroup("P6_3/mmc", Lattice.hexagonal(3.16, 12.29), ["Mo", "S"],
                                     [[1 / 3, 2 / 3, 0.25], [1 / 3, 2 / 3, 0.621]])
    assert len(mos2) == 6 and n_components(mos2) == 2
    # one sheet per cell (1T-like, 3 atoms): the quotient graph cannot see the missing interlayer
    # bonds, so it counts as one component (the contract documents this limit)
    one_layer = Structure(Lattice.hexagonal(3.16, 6.0), ["Mo", "S", "S"],
                          [[0, 0, 0], [1 / 3, 2 / 3, 0.26], [2 / 3, 1 / 3, -0.26]])
    assert n_components(one_layer) == 1


def test_molecular_crystals_and_isolated_atoms():
    # two N2 molecules per cell, 3 A apart: two components
    n2 = Structure(Lattice.cubic(6.0), ["N"] * 4,
                   [[0, 0, 0], [0.183, 0, 0], [0.5, 0.5, 0.5], [0.683, 0.5, 0.5]])
    assert n_components(n2) == 2
    # a lone atom in a huge cell next to a bonded pair: the atom is its own component
    gas = Structure(Lattice.cubic(20.0), ["Na", "Cl", "Ar"], [[0, 0, 0], [0.12, 0, 0], [0.5, 0.5, 0.5]])
    assert n_components(gas) == 2 and not is_connected(gas)


@pytest.mark.parametrize("scale,expected", [(1.5, 1), (0.5, 2)])
def test_bond_scale_decides(scale, expected):
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    prim = nacl.get_primitive_structure()
    assert n_components(prim, scale=scale) == expected
