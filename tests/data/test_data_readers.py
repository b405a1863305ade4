"""Readers: every published shape streams, bad records are counted with their ids, never raised."""

from __future__ import annotations

import gzip
import json
import math

import pytest
from data_inputs import write_alexandria, write_mp, write_wbm

from matra_hpc.data import jsonstream
from matra_hpc.data.readers import iter_work_items, load_item, parse_source
from matra_hpc.errors import UsageError

RECORDS = [{"a": [1, 2, {"b": 'x]"}{'}], "s": "q\\\\", "n": i, "u": "é"} for i in range(30)]


@pytest.mark.parametrize("chunk", [5, 64, 1 << 20])
@pytest.mark.parametrize("shape", ["array", "entries", "columns", "jsonl"])
def test_stream_shapes(tmp_path, monkeypatch, chunk: int, shape: str) -> None:
    # Tiny read chunks put record and string boundaries across buffer refills.
    monkeypatch.setattr(jsonstream, "_CHUNK", chunk)
    path = tmp_path / ("x.jsonl.gz" if shape == "jsonl" else "x.json.gz")
    with gzip.open(path, "wt") as f:
        if shape == "array":
            json.dump(RECORDS, f)
        elif shape == "entries":
            json.dump({"@module": "m", "meta": {"k": [1, {"z": "]"}]}, "entries": RECORDS}, f, indent=1)
        elif shape == "columns":
            json.dump({"material_id": {str(i): f"mp-{i}" for i in range(30)},
                       "entry": {str(i): r for i, r in enumerate(RECORDS)}}, f)
        else:
            f.write("\n".join(json.dumps(r) for r in RECORDS) + "\n")
    raws = list(jsonstream.iter_raw_records(path))
    assert [jsonstream.decode_record(r) for r in raws] == RECORDS
    assert [r.index for r in raws] == list(range(30))
    if shape == "columns":
        assert [r.key for r in raws][:2] == ["0", "1"]
        assert jsonstream.iter_side_members(path, ("material_id",))["material_id"]["7"] == "mp-7"


def test_truncated_file_marks_last_record(tmp_path) -> None:
    text = json.dumps(RECORDS[:4])
    (tmp_path / "t.json").write_text(text[: len(text) - 30])
    raws = list(jsonstream.iter_raw_records(tmp_path / "t.json"))
    assert [r.truncated for r in raws] == [False, False, False, True]
    with pytest.raises(ValueError):
        jsonstream.decode_record(raws[-1])


def test_mp_reader_counts_corrupt_and_nan_records(tmp_path, flla40) -> None:
    rows = flla40[:12]
    write_mp(tmp_path / "mp", rows, corrupt_index=3, nan_index=5)
    spec = parse_source(f"mp={tmp_path / 'mp'}")
    assert spec.summary is not None and spec.summary.endswith("mp-energies.csv.gz")
    loaded = [load_item(item, spec.summary) for item in iter_work_items(spec)]
    assert len(loaded) == 12
    assert [x.id for x in loaded] == [f"mp:{r.material_id}" for r in rows]
    assert loaded[3].reason == "parse_error" and loaded[3].structure is None
    assert loaded[5].reason == "nan_or_inf"
    ok = [(x, r) for i, (x, r) in enumerate(zip(loaded, rows, strict=True)) if i not in (3, 5)]
    assert all(x.reason is None for x, _ in ok)
    for x, r in ok:
        assert x.e_above_hull == pytest.approx(r.properties["e_above_hull"])
        assert x.e_form == pytest.approx(r.properties["e_form"])
        assert len(x.structure) == len(r.structure)


def test_cut_compressed_file_is_counted_not_raised(tmp_path, flla40) -> None:
    write_alexandria(tmp_path / "alex", flla40[:20], per_file=10)
    cut = tmp_path / "alex" / "alexandria_000.json.bz2"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])  # an interrupted copy
    spec = parse_source(f"alexandria={tmp_path / 'alex'}")
    loaded = [load_item(i) for i in iter_work_items(spec)]
    bad = [x for x in loaded if x.reason]
    assert len(bad) == 1 and bad[0].reason == "parse_error" and "alexandria_000.json.bz2#unreadable" in bad[0].id
    assert sum(x.reason is None for x in loaded) >= 10  # the second file is read in full


def test_alexandria_and_wbm_readers(tmp_path, flla40) -> None:
    rows = flla40[:25]
    write_alexandria(tmp_path / "alex", rows, per_file=10)
    spec = parse_source(f"alexandria={tmp_path / 'alex'}")
    assert len(spec.paths) == 3  # 10 + 10 + 5 entries
    loaded = [load_item(i) for i in iter_work_items(spec)]
    assert [x.id for x in loaded][:1] == ["alex:agm" + rows[0].material_id.split("-")[1].zfill(9)]
    assert all(x.reason is None for x in loaded)
    assert [x.e_above_hull for x in loaded] == pytest.approx([r.properties["e_above_hull"] for r in rows])

    write_wbm(tmp_path / "wbm", rows[:6])
    spec = parse_source(f"wbm={tmp_path / 'wbm'}")
    loaded = [load_item(i, spec.summary) for i in iter_work_items(spec)]
    assert [x.id for x in loaded] == [f"wbm:wbm-1-{i + 1}" for i in range(6)]
    assert loaded[2].e_form == pytest.approx(rows[2].properties["e_form"])


def test_folder_reader_counts_bad_files(tmp_path, flla40) -> None:
    from pymatgen.core import Lattice, Structure
    from pymatgen.io.cif import CifWriter

    folder = tmp_path / "mine"
    folder.mkdir()
    s0, s1 = flla40[0].structure, flla40[1].structure
    CifWriter(s0).write_file(folder / "good.cif")
    s1.to(filename=str(folder / "POSCAR"), fmt="poscar")
    (folder / "broken.cif").write_text("data_x\n_cell_length_a what\nloop_\n_atom_site_label\n")
    disordered = Structure(Lattice.cubic(4.0), [{"Cu": 0.5, "Au": 0.5}], [[0, 0, 0]])
    CifWriter(disordered).write_file(folder / "alloy.cif")
    import ase.io
    from ase import Atoms

    periodic = Atoms("Si2", scaled_positions=[[0, 0, 0], [0.25, 0.25, 0.25]], cell=[5.4] * 3, pbc=True)
    periodic.info["material_id"] = "si-x"
    molecule = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]], pbc=False)
    ase.io.write(folder / "frames.extxyz", [periodic, molecule], format="extxyz")
    (folder / "properties.csv").write_text("id,e_above_hull,e_form\ngood,0.01,-1.5\n")
    # two data_ blocks in one file: both are read (the same reader as `tokens encode`)
    (folder / "pair.cif").write_text(str(CifWriter(s1)) + "\n" + str(CifWriter(s0)))

    spec = parse_source(f"folder={folder}")
    loaded = {x.id: x for x in (load_item(i, spec.summary) for i in iter_work_items(spec))}
    assert set(loaded) == {"mine:good", "mine:POSCAR", "mine:broken", "mine:alloy", "mine:si-x", "mine:frames-1",
                           "mine:pair#0", "mine:pair#1"}
    assert loaded["mine:pair#0"].structure.composition == s1.composition
    assert loaded["mine:pair#1"].structure.composition == s0.composition
    from matra_hpc.tokens.structure_io import iter_structures

    assert [name for name, _ in iter_structures([str(folder / "pair.cif")])] == [
        f"{folder / 'pair.cif'}#0", f"{folder / 'pair.cif'}#1"]
    assert loaded["mine:broken"].reason == "parse_error"
    assert loaded["mine:alloy"].reason == "disordered"
    assert loaded["mine:frames-1"].reason == "not_periodic"
    assert loaded["mine:si-x"].reason is None and len(loaded["mine:si-x"].structure) == 2
    assert loaded["mine:good"].e_above_hull == pytest.approx(0.01)
    assert math.isnan(loaded["mine:POSCAR"].e_above_hull)


def test_bad_source_specs(tmp_path) -> None:
    with pytest.raises(UsageError, match="expected KIND=PATH"):
        parse_source("nonsense")
    with pytest.raises(UsageError, match="unknown kind"):
        parse_source(f"oqmd={tmp_path}")
    with pytest.raises(UsageError, match="no mp structure files"):
        parse_source(f"mp={tmp_path}")
