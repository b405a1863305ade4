"""VASP inputs: values MP and the paper fix, asserted one by one (not golden files)."""

from __future__ import annotations

import pytest
from pymatgen.core import Lattice, Structure

from matra_hpc.dft.config import VaspPrepConfig
from matra_hpc.dft.inputs import relax_set, write_inputs
from matra_hpc.errors import UsageError


def fe2o3() -> Structure:
    return Structure.from_spacegroup("R-3c", Lattice.hexagonal(5.035, 13.75), ["Fe", "O"],
                                     [[0, 0, 0.3553], [0.3059, 0, 0.25]])


def cof2() -> Structure:  # rutile
    return Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(4.695, 3.180), ["Co", "F"],
                                     [[0, 0, 0], [0.306, 0.306, 0]])


def caf2() -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.46), ["Ca", "F"], [[0, 0, 0], [0.25, 0.25, 0.25]])


def mgo() -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.21), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def paper_set(structure: Structure, **kwargs):
    config = VaspPrepConfig(store="s", out="o", **kwargs)
    return relax_set(structure, kpoints_per_atom=config.kpoints_per_atom, incar=config.incar_settings())


def u_values(vis) -> dict[str, float]:
    incar = vis.incar
    if not incar.get("LDAU"):
        return {}
    return dict(zip(vis.poscar.site_symbols, incar["LDAUU"], strict=True))


def test_mp_settings_with_the_papers_changes():
    vis = paper_set(fe2o3())
    incar = vis.incar
    assert incar["ENCUT"] == 520
    assert incar["EDIFFG"] == pytest.approx(-0.005)
    assert incar["LCHARG"] is False
    assert incar["NSW"] == 200
    assert incar["ISIF"] == 3 and incar["IBRION"] == 2
    assert incar["PREC"] == "Accurate"
    assert "NCORE" not in incar and "KPAR" not in incar


def test_hubbard_u_as_mp_does():
    assert u_values(paper_set(fe2o3())) == {"Fe": pytest.approx(5.3), "O": 0}
    # a transition metal in a fluoride gets U too (MP: Co 3.32 eV)
    assert u_values(paper_set(cof2())) == {"Co": pytest.approx(3.32), "F": 0}
    # a plain fluoride and an oxide without such a metal get none
    assert not paper_set(caf2()).incar.get("LDAU")
    assert not paper_set(mgo()).incar.get("LDAU")


def test_gamma_centred_grid_at_1000_per_reciprocal_atom():
    from pymatgen.io.vasp.inputs import Kpoints

    # 2 atoms, a = 3.2 A, c = 4.3 A: 1000 k-points/atom -> 505 per atom of the cell (pymatgen nudges a
    # perfect cube by 1%), divisions floor((505 a a c)^(1/3) / length) = floor(28.12/3.2), floor(28.12/4.3)
    cell = Structure(Lattice.tetragonal(3.2, 4.3), ["Cu", "Cu"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert Kpoints.automatic_density(cell, 1000).style == Kpoints.supported_modes.Monkhorst  # pymatgen's default
    kpoints = paper_set(cell).kpoints
    assert kpoints.style == Kpoints.supported_modes.Gamma
    assert tuple(kpoints.kpts[0]) == (8, 8, 6)
    # silicon, primitive fcc cell of a = 5.468 A: 7 x 7 x 7
    si = Structure(Lattice([[0, 2.734, 2.734], [2.734, 0, 2.734], [2.734, 2.734, 0]]), ["Si", "Si"],
                   [[0, 0, 0], [0.25, 0.25, 0.25]])
    assert tuple(paper_set(si).kpoints.kpts[0]) == (7, 7, 7)


def test_parallel_settings_from_the_profile_and_user_overrides():
    incar = paper_set(mgo(), ncore=4, kpar=2, user_incar_settings={"NELM": 200}).incar
    assert incar["NCORE"] == 4 and incar["KPAR"] == 2 and incar["NELM"] == 200


def test_potcar_spec_holds_mps_symbols(tmp_path):
    from pymatgen.io.vasp.sets import MPRelaxSet

    for structure, expected in ((fe2o3(), ["Fe_pv", "O"]), (cof2(), ["Co", "F"]), (caf2(), ["Ca_sv", "F"]),
                                (mgo(), ["Mg_pv", "O"])):
        out = tmp_path / structure.composition.reduced_formula
        config = VaspPrepConfig(store="s", out="o")
        symbols = write_inputs(structure, out, kpoints_per_atom=1000, incar=config.incar_settings())
        spec = (out / "POTCAR.spec").read_text().split()
        assert spec == symbols == expected
        assert spec == [MPRelaxSet.CONFIG["POTCAR"][el] for el in out.joinpath("POSCAR").read_text().split("\n")[5].split()]
        assert not (out / "POTCAR").exists()
        assert sorted(p.name for p in out.iterdir()) == ["INCAR", "KPOINTS", "POSCAR", "POTCAR.spec"]


@pytest.mark.parametrize("bad", [{"top": 0}, {"filters": ("novel", "shiny")}, {"tie_break": "coin"},
                                 {"ediffg": 0.01}, {"nsw": 0}, {"ncore": 0}, {"per_temperature": {"0.7": 3}}])
def test_bad_settings_are_usage_errors(bad):
    with pytest.raises(UsageError):
        VaspPrepConfig(store="s", out="o", **bad).validate()
