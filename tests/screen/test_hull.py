"""Energy above the hull: references relaxed like candidates, MP2020 on both, ASE elemental fallbacks."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from matra_hpc.screen.hull import HullCalculator, ReferenceCache, load_references, ml_entry
from matra_hpc.screen.relax import RelaxStep, relax_structures


def sic(a: float = 4.36) -> Structure:
    return Structure.from_spacegroup("F-43m", Lattice.cubic(a), ["Si", "C"], [[0, 0, 0], [0.25, 0.25, 0.25]])


def _hull(tmp_path, sevennet, refs):
    protocol = [RelaxStep("sevennet", 0.05, 80)]

    def relax(structures):
        return relax_structures(structures, protocol, lambda _n: sevennet)

    def single_point(structure):
        from pymatgen.io.ase import AseAtomsAdaptor

        atoms = AseAtomsAdaptor.get_atoms(structure)
        atoms.calc = sevennet.calculator()
        return atoms.get_potential_energy() / len(atoms)

    return HullCalculator(refs, ReferenceCache(tmp_path / "refs", "w0"), relax, single_point, "test"), relax


def test_relaxed_reference_on_hull_expanded_one_above(tmp_path, sevennet):
    folder = tmp_path / "refs_in"
    folder.mkdir()
    sic().to(filename=str(folder / "sic.cif"))
    refs = load_references(folder)
    assert [r.id for r in refs] == ["sic"]
    hull, relax = _hull(tmp_path, sevennet, refs)
    # Si and C come from ASE's reference crystals (diamond), relaxed the same way
    assert hull.prepare({frozenset({"Si", "C"})}) == 3
    assert {"ase:Si", "ase:C", "sic"} <= set(hull.cache.data)
    [relaxed] = relax([sic().get_primitive_structure()])
    e_relaxed, reason = hull.e_hull(relaxed.structure, relaxed.energy_per_atom)
    assert reason == "" and abs(e_relaxed) < 0.01
    expanded = sic().get_primitive_structure()
    expanded.scale_lattice(expanded.volume * 1.1 ** 3)
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = AseAtomsAdaptor.get_atoms(expanded)
    atoms.calc = sevennet.calculator()
    e_expanded, reason = hull.e_hull(expanded, atoms.get_potential_energy() / len(atoms))
    assert reason == "" and e_expanded > 0.1
    # a second process finds every reference in the cache and relaxes nothing
    again, _ = _hull(tmp_path, sevennet, refs)
    assert again.prepare({frozenset({"Si", "C"})}) == 0


def test_elements_without_reference_crystals(tmp_path, sevennet):
    hull, _ = _hull(tmp_path, sevennet, [])
    hull._elemental_fallbacks(frozenset({"O", "S", "Si"}))
    kinds = {r.id: r.kind for refs in hull.by_element_set.values() for r in refs}
    assert kinds["ase:Si"] == "ase" and kinds["molecule:O"] == "molecule"
    assert {"approx:S:fcc", "approx:S:bcc", "approx:S:sc"} <= set(kinds) and hull.approximate == {"S"}
    assert "approx:S" in hull.method_for(Structure(Lattice.cubic(4), ["Si", "S"], [[0, 0, 0], [0.5, 0.5, 0.5]]))
    # an element whose only reference failed: no hull, reason no_reference
    hull.cache.add([{"id": "ase:Si", "energy_per_atom": None, "reason": "relax_nan"}])
    e, reason = hull.e_hull(Structure(Lattice.cubic(3), ["Si"], [[0, 0, 0]]), -5.0)
    assert np.isnan(e) and reason == "no_reference"


def test_mp2020_parameters_of_ml_entries():
    fe2o3 = Structure.from_spacegroup("R-3c", Lattice.hexagonal(5.03, 13.75), ["Fe", "O"],
                                      [[0, 0, 0.355], [0.306, 0, 0.25]])
    entry = ml_entry(fe2o3, -6.7, "x")
    assert entry.parameters["run_type"] == "GGA+U" and entry.parameters["hubbards"]["Fe"] == pytest.approx(5.3)
    names = {a.name for a in entry.energy_adjustments}
    assert any("oxide" in n for n in names) and any("mixing" in n for n in names)
    plain = ml_entry(sic(), -7.0, "y")
    assert plain.parameters["run_type"] == "GGA"


def test_reference_selection_keeps_each_formulas_lowest(tmp_path):
    from ase.io import write
    from pymatgen.io.ase import AseAtomsAdaptor

    frames = []
    for a, ehull in ((4.36, 0.004), (4.5, 0.2), (4.6, 0.0005)):
        atoms = AseAtomsAdaptor.get_atoms(sic(a).get_primitive_structure())
        atoms.info["e_above_hull"] = ehull
        frames.append(atoms)
    frames[2] = AseAtomsAdaptor.get_atoms(Structure(Lattice.cubic(2.7), ["Si"], [[0, 0, 0]]))
    frames[2].info["e_above_hull"] = 0.0005
    write(tmp_path / "refs.extxyz", frames)
    refs = load_references(tmp_path, max_ehull=0.001)
    # SiC: neither polymorph is within 0.001, the lower one is kept; Si is within
    assert sorted((r.structure.composition.reduced_formula, r.dft_e_hull) for r in refs) == [
        ("Si", 0.0005), ("SiC", 0.004)]
    assert len(load_references(tmp_path, max_ehull=None)) == 3
