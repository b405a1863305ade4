"""`matra-hpc tokens encode|decode|roundtrip` on real files (CIF, POSCAR, extxyz, CSV)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from matra_hpc.cli import main
from matra_hpc.data.demo import iter_flla


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from ase.io import write
    from pymatgen.io.ase import AseAtomsAdaptor

    root = tmp_path_factory.mktemp("structures")
    records = list(iter_flla(12))
    with open(root / "flla.csv", "w", newline="") as handle:
        handle.write("# Materials Project structures, CC BY 4.0\n")
        writer = csv.writer(handle)
        writer.writerow(["material_id", "structure", "e_above_hull"])
        for r in records[:8]:
            # Python-repr dicts, as flla_2015.csv stores them.
            writer.writerow([r.material_id, str(r.structure.as_dict()), r.properties["e_above_hull"]])
        writer.writerow(["broken", "{'not': 'a structure'", 0.0])
    files = root / "files"
    files.mkdir()
    records[8].structure.to(filename=str(files / "one.cif"))
    records[9].structure.to(filename=str(files / "POSCAR"))
    write(
        str(files / "two.extxyz"),
        [AseAtomsAdaptor.get_atoms(r.structure) for r in records[10:12]],
        format="extxyz",
    )
    return root


def _last_json(capsys) -> dict:
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


def test_roundtrip_csv_and_files(inputs, capsys):
    assert main(["tokens", "roundtrip", str(inputs / "flla.csv"), "--csv-column", "structure"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    summary = lines[-1]
    assert set(summary) == {"n", "encodable", "roundtrip_ok", "rate", "failures", "structures_per_s"}
    assert summary["n"] == 9 and summary["failures"].get("parse_error") == 1
    assert summary["roundtrip_ok"] == summary["encodable"] and summary["rate"] == 1.0
    # Every failure is named by file and row id, one line each, before the summary.
    failed = lines[:-1]
    assert len(failed) == sum(summary["failures"].values()) == summary["n"] - summary["roundtrip_ok"]
    broken = [f for f in failed if f["reason"] == "parse_error"]
    assert broken == [
        {
            "failed": f"{inputs / 'flla.csv'}:broken",
            "index": 8,
            "reason": "parse_error",
            "detail": broken[0]["detail"],
        }
    ]
    assert all(f["failed"].startswith(str(inputs / "flla.csv") + ":mp-") for f in failed if f not in broken)

    for symmetry in ("moyopy", "spglib"):
        assert main(["tokens", "roundtrip", str(inputs / "files"), "--symmetry", symmetry]) == 0
        summary = _last_json(capsys)
        assert summary["n"] == 4 and summary["rate"] == 1.0, symmetry


def test_encode_then_decode_writes_cifs(inputs, tmp_path, capsys):
    from pymatgen.core import Structure

    out = tmp_path / "seqs.jsonl"
    assert main(["tokens", "encode", str(inputs), "--csv-column", "structure", "--out", str(out)]) == 0
    summary = _last_json(capsys)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary["encoded"] == len(lines) and summary["n"] == 13
    assert all(
        line["prototype_hash"].startswith("v2:") and len(line["tokens"]) == len(line["values"])
        for line in lines
    )
    cifs = tmp_path / "cifs"
    assert main(["tokens", "decode", str(out), "--out", str(cifs)]) == 0
    assert _last_json(capsys)["decoded"] == len(lines)
    written = sorted(cifs.glob("*.cif"))
    assert len(written) == len(lines)
    assert len(Structure.from_file(str(written[0]))) > 0


def test_usage_errors_exit_2(inputs, tmp_path):
    run = [sys.executable, "-m", "matra_hpc", "tokens", "roundtrip"]
    missing = subprocess.run([*run, str(tmp_path / "nope.cif")], capture_output=True, text=True)
    assert missing.returncode == 2 and "no such file" in missing.stderr
    no_column = subprocess.run([*run, str(inputs / "flla.csv")], capture_output=True, text=True)
    assert no_column.returncode == 2 and "--csv-column" in no_column.stderr
