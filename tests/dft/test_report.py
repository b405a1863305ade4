"""dft-report on recorded VASP outputs: converged, unconverged, broken, foreign; e-hull and MP2020 once."""

from __future__ import annotations

import csv
import gzip
import json
import shutil
import warnings
import zipfile
from pathlib import Path

import pytest
from dft_helpers import FILES, build_screened_store, fixture_structure

from matra_hpc.context import local_context
from matra_hpc.dft import DftReportConfig, VaspPrepConfig, read_tree_manifest, run_dft_report, run_vasp_prep
from matra_hpc.dft.report import load_references


def static_entry():
    from pymatgen.io.vasp.outputs import Vasprun

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = Vasprun(str(FILES / "Si.static.vasprun.xml.gz"), parse_dos=False, parse_eigen=False,
                      parse_potcar_file=False)
        return run.get_computed_entry(inc_structure=True)


def write_refs(path: Path, entries) -> Path:
    path.write_text(json.dumps([e.as_dict() for e in entries]))
    return path


def fe2o3_entry(energy: float, adjustments=()):
    from pymatgen.core import Lattice, Structure
    from pymatgen.entries.computed_entries import ComputedStructureEntry

    structure = Structure.from_spacegroup("R-3c", Lattice.hexagonal(5.035, 13.75), ["Fe", "O"],
                                          [[0, 0, 0.3553], [0.3059, 0, 0.25]])
    params = {"run_type": "GGA+U", "hubbards": {"Fe": 5.3, "O": 0.0},
              "potcar_spec": [{"titel": "PAW_PBE Fe_pv 06Sep2000", "hash": None},
                              {"titel": "PAW_PBE O 08Apr2002", "hash": None}]}
    return ComputedStructureEntry(structure, energy, energy_adjustments=list(adjustments), parameters=params,
                                  entry_id="ref-fe2o3")


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A prepared tree whose candidates then 'ran': outputs copied in as VASP and custodian leave them."""
    root = tmp_path_factory.mktemp("report")
    si = fixture_structure("Si.relax.vasprun.xml.gz")
    rows = [dict(structure=si, e_hull=0.01 * i) for i in range(5)]
    rows += [dict(structure=fixture_structure("V2O5.unconverged-electronic.vasprun.xml.gz"), e_hull=0.1),
             dict(structure=fixture_structure("Ag.unconverged-ionic.vasprun.xml.gz"), e_hull=0.11),
             dict(structure=fixture_structure("FeO.relax-U4.vasprun.xml.gz"), e_hull=0.12)]
    store = build_screened_store(root / "screened.zarr", rows)
    out = root / "vasp"
    run_vasp_prep(VaspPrepConfig(store=str(store), out=str(out), top=10), local_context())
    dirs = {c["id"].rsplit(":", 1)[1]: out / c["dir"] for c in read_tree_manifest(out)["candidates"]}

    def put(index: str, run: str, fixture: str) -> None:
        shutil.copy(FILES / fixture, dirs[index] / f"vasprun.xml.{run}.gz")

    for index in ("0", "1"):  # converged: double relaxation and static
        put(index, "relax1", "Si.relax.vasprun.xml.gz")
        put(index, "relax2", "Si.relax.vasprun.xml.gz")
        put(index, "static", "Si.static.vasprun.xml.gz")
    put("2", "relax1", "Si.relax.vasprun.xml.gz")  # static cut off mid-write
    put("2", "relax2", "Si.relax.vasprun.xml.gz")
    data = gzip.decompress((FILES / "Si.static.vasprun.xml.gz").read_bytes())
    (dirs["2"] / "vasprun.xml.static").write_bytes(data[: len(data) // 2])
    # "3": never ran. "4": its candidate.json names another candidate (not written by vasp-prep)
    (dirs["4"] / "candidate.json").write_text(json.dumps({"id": "someone:else"}))
    shutil.copy(FILES / "V2O5.unconverged-electronic.vasprun.xml.gz", dirs["5"] / "vasprun.xml.gz")
    put("6", "relax1", "Ag.unconverged-ionic.vasprun.xml.gz")
    for run in ("relax1", "relax2", "static"):  # FeO with U(Fe) = 4.0: not MP2020's 5.3
        put("7", run, "FeO.relax-U4.vasprun.xml.gz")
    (out / "b0000" / "stray-folder").mkdir()
    return out


def test_reasons_counts_and_e_hull(tree, tmp_path):
    e_si = static_entry().energy_per_atom
    ref = static_entry()
    # a Si reference 0.04 eV/atom below the candidates' static energy: their e-hull is 0.04
    ref = type(ref)(ref.structure, (e_si - 0.04) * ref.composition.num_atoms, parameters=ref.parameters)
    refs = write_refs(tmp_path / "refs.json", [ref])
    summary = run_dft_report(DftReportConfig(tree=str(tree), hull_reference=str(refs)), local_context())
    report = json.loads((tree / "dft-report.json").read_text())
    rows = {r["id"].rsplit(":", 1)[1]: r for r in report["rows"]}
    assert rows["0"]["state"] == rows["1"]["state"] == "converged"
    assert rows["0"]["e_hull_dft"] == pytest.approx(0.04, abs=1e-9)
    assert rows["0"]["energy_per_atom"] == pytest.approx(e_si)
    assert rows["0"]["correction_per_atom"] == pytest.approx(0.0)  # MP2020 corrects nothing in Si
    assert rows["0"]["e_hull_ml"] == pytest.approx(0.0)
    expected = {"2": "validation_failed", "3": "not_run", "4": "not_from_vasp_prep", "5": "unconverged_electronic",
                "6": "unconverged_ionic", "7": "incompatible"}
    assert {k: rows[k]["reason"] for k in expected} == expected
    assert "truncated" in rows["2"]["message"]
    assert rows["7"]["message"].startswith("MP2020: Incompatible")  # Fe POTCAR (MP uses Fe_pv), U 4.0
    counts = summary["counts"]
    assert counts["candidates"] == 8 and counts["converged"] == 2 and counts["failed"] == 6
    assert counts["below"] == {"0.001": 0, "0.050": 2, "0.100": 2}
    assert summary["unknown_directories"] == ["b0000/stray-folder"]
    with open(tree / "dft-report.csv") as handle:
        table = list(csv.DictReader(handle))
    assert [r["id"] for r in table] == [r["id"] for r in report["rows"]]
    for png in ("dft-report.png", "dft-parity.png"):
        assert (tree / png).read_bytes()[:4] == b"\x89PNG"
    assert summary["stable"] == 0 and (tree / "dft-stable.extxyz").read_text() == ""


def test_stable_bundle_and_missing_references(tree, tmp_path):
    from ase.io import read

    ref = static_entry()
    e_si = ref.energy_per_atom
    ref = type(ref)(ref.structure, (e_si - 0.04) * ref.composition.num_atoms, parameters=ref.parameters)
    refs = write_refs(tmp_path / "refs.json", [ref])
    summary = run_dft_report(DftReportConfig(tree=str(tree), hull_reference=str(refs), stable_threshold=0.05,
                                             workers=2), local_context())
    assert summary["stable"] == 2
    with zipfile.ZipFile(tree / "dft-stable-cif.zip") as bundle:
        names = sorted(bundle.namelist())
    ids = sorted(c["id"] for c in read_tree_manifest(tree)["candidates"])[:2]
    assert names == sorted(f"{i.replace(':', '%3A')}.cif" for i in ids)
    frames = read(tree / "dft-stable.extxyz", index=":")
    assert sorted(f.info["id"] for f in frames) == ids
    assert all(f.get_chemical_formula() == "Si2" for f in frames)
    # references without Si: the converged candidates get a reason, not a crash
    other = write_refs(tmp_path / "fe2o3.json", [fe2o3_entry(-100.0)])
    run_dft_report(DftReportConfig(tree=str(tree), hull_reference=str(other)), local_context())
    rows = {r["id"].rsplit(":", 1)[1]: r for r in json.loads((tree / "dft-report.json").read_text())["rows"]}
    assert rows["0"]["reason"] == "no_reference" and "Si" in rows["0"]["message"]


def test_mp2020_is_applied_exactly_once(tmp_path):
    from pymatgen.entries.compatibility import MP2020_COMPAT_CONFIG
    from pymatgen.entries.computed_entries import ConstantEnergyAdjustment

    corrections = MP2020_COMPAT_CONFIG["Corrections"]
    fe_u = corrections["GGAUMixingCorrections"]["O"]["Fe"]
    oxide = corrections["CompositionCorrections"]["oxide"]
    raw = -200.0
    plain = fe2o3_entry(raw)
    n_fe = plain.composition["Fe"]
    n_o = plain.composition["O"]
    expected = raw + n_fe * fe_u + n_o * oxide
    entries, info = load_references(write_refs(tmp_path / "plain.json", [plain]))
    assert entries[0].energy == pytest.approx(expected)
    assert info["corrected_here"] == 1 and info["already_mp2020"] == 0
    # the corrected entry written out and read again is used as it is: not corrected twice
    again, info = load_references(write_refs(tmp_path / "corrected.json", entries))
    assert again[0].energy == pytest.approx(expected)
    assert info["already_mp2020"] == 1 and info["corrected_here"] == 0
    # another scheme's adjustment is replaced, not added to
    legacy = fe2o3_entry(raw, [ConstantEnergyAdjustment(-7.0, name="Legacy MP correction")])
    cleaned, _ = load_references(write_refs(tmp_path / "legacy.json", [legacy]))
    assert cleaned[0].energy == pytest.approx(expected)


def test_entries_without_run_parameters_are_refused_unless_taken_as_given(tmp_path):
    from pymatgen.entries.computed_entries import ComputedEntry

    bare = write_refs(tmp_path / "bare.json", [ComputedEntry("Si2", -10.0)])
    entries, info = load_references(bare)
    assert entries == [] and info["refused_by_mp2020"] == 1
    entries, info = load_references(bare, "none")
    assert [e.energy for e in entries] == [-10.0] and info["correction"] == "none"


def test_bad_reference_files_are_usage_errors(tmp_path):
    from matra_hpc.errors import UsageError

    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UsageError):
        load_references(tmp_path / "bad.json")
    with pytest.raises(UsageError):
        load_references(tmp_path / "absent.json")


def test_e_hull_uses_compounds_of_the_system():
    from pymatgen.core import Composition
    from pymatgen.entries.computed_entries import ComputedEntry

    from matra_hpc.dft.report import _hulls

    refs = [ComputedEntry(Composition("Fe"), -8.0), ComputedEntry(Composition("O2"), -9.8),
            ComputedEntry(Composition("FeO"), -15.0), ComputedEntry(Composition("Si"), -5.0)]
    candidate = fe2o3_entry(-7.0 * 30)  # 30 atoms at -7.0 eV/atom, oxygen fraction 0.6
    row = {"id": "c", "state": "converged", "entry": candidate.as_dict(), "e_hull_dft": None}
    _hulls([row], refs)
    # hull at x(O) = 0.6 lies on the FeO (0.5, -7.5) -- O (1, -4.9) tie line: -7.5 + 0.2 * 2.6 = -6.98
    assert row["e_hull_dft"] == pytest.approx(-7.0 - (-6.98))
