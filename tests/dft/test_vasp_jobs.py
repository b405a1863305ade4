"""submit vasp on the real local Slurm: job arrays, custodian, a fake vasp replaying recorded runs.

One tree of four candidates: a clean run, a run that first crashes with a Sub-Space-Matrix error
(custodian's VaspErrorHandler sets LREAL = False and reruns), a run whose SCF never converges
(UnconvergedErrorHandler switches ALGO until custodian gives up), and a run that dies without a
vasprun.xml (VasprunXMLValidator makes it a failure). Then --resubmit, then dft-report.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from dft_helpers import build_screened_store, fixture_structure

from matra_hpc.cli import main
from matra_hpc.context import local_context
from matra_hpc.dft import VaspPrepConfig, read_tree_manifest, run_vasp_prep, tree_states
from matra_hpc.launch import read_manifest

REPO = Path(__file__).resolve().parents[2]
FAKE_VASP = Path(__file__).resolve().parent / "fake_vasp.py"
OK = [{"vasprun": "Si.relax.vasprun.xml.gz"}, {"vasprun": "Si.relax.vasprun.xml.gz"},
      {"vasprun": "Si.static.vasprun.xml.gz"}]
CRASH_FIRST = [{"stdout": "vasp.out.subspace"}, *OK]
UNCONVERGED = [{"vasprun": "V2O5.unconverged-electronic.vasprun.xml.gz"}]
DEAD = [{"exit": 1}]

pytestmark = pytest.mark.slurm


def incar(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def test_job_arrays_run_custodian_and_record_each_candidate(slurm, tmp_path, capsys):
    def matra(*args: str) -> subprocess.CompletedProcess:
        """The command line, in this process (the jobs themselves run in Slurm)."""
        capsys.readouterr()
        code = main(list(args))
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out.out, out.err)

    si = fixture_structure("Si.relax.vasprun.xml.gz")
    v2o5 = fixture_structure("V2O5.unconverged-electronic.vasprun.xml.gz")
    store = build_screened_store(tmp_path / "screened.zarr", [
        dict(structure=si, e_hull=0.00), dict(structure=si, e_hull=0.01), dict(structure=v2o5, e_hull=0.02),
        dict(structure=si, e_hull=0.03)])
    tree = tmp_path / "vasp"
    run_vasp_prep(VaspPrepConfig(store=str(store), out=str(tree), top=4), local_context())
    manifest = read_tree_manifest(tree)
    ids = [c["id"] for c in manifest["candidates"]]
    dirs = {c["id"]: tree / c["dir"] for c in manifest["candidates"]}
    scenarios = tmp_path / "scenarios.json"
    scenarios.write_text(json.dumps({ids[0]: OK, ids[1]: CRASH_FIRST, ids[2]: UNCONVERGED, ids[3]: DEAD,
                                     "default": DEAD}))
    profile = tmp_path / "site.yaml"
    profile.write_text(
        "cluster: slurm\npartition: debug\nmem: 1G\ntime: \"00:10:00\"\n"
        f"vasp:\n  command: {sys.executable} {FAKE_VASP} {scenarios}\n")

    run1 = tmp_path / "run1"
    out = matra("submit", "vasp", str(tree), "--profile", str(profile), "--per-task", "2", "--polling-s", "0.1",
                "--max-errors", "2", "--run-dir", str(run1), "--wait")
    assert "4 candidate(s) in 2 array task(s), 1 array job(s)" in out.stdout, out.stdout + out.stderr
    script = (run1 / "vasp-array-0.sh").read_text()
    assert "#SBATCH --array=0-1\n" in script and "matra_hpc.dft.runner" in script
    jobs = read_manifest(run1)["jobs"]
    assert len(jobs) == 2 and all(j["state"] == "COMPLETED" for j in jobs), jobs

    states = tree_states(read_tree_manifest(tree))
    assert [states[i]["status"] for i in ids] == ["converged", "converged", "failed", "failed"]
    assert states[ids[2]]["reason"] == "unconverged_electronic"
    assert states[ids[3]]["reason"] == "validation_failed"
    # custodian's corrections, as the fake vasp saw them in the INCAR of the next call
    crashed = dirs[ids[1]] / ".fake_vasp"
    assert incar(crashed / "INCAR.0")["LREAL"] == "Auto" and incar(crashed / "INCAR.1")["LREAL"] == "False"
    assert [c["handler"] for c in states[ids[1]]["corrections"]] == ["VaspErrorHandler"]
    assert states[ids[1]]["corrections"][0]["errors"] == ["subspacematrix"]
    unconverged = dirs[ids[2]] / ".fake_vasp"
    assert incar(unconverged / "INCAR.0")["ALGO"] == "Fast" and incar(unconverged / "INCAR.1")["ALGO"] == "Normal"
    assert {c["handler"] for c in states[ids[2]]["corrections"]} == {"UnconvergedErrorHandler"}
    # the clean run: double relaxation then a static run from the relaxed structure, MP settings kept
    clean = dirs[ids[0]]
    assert sorted(p.name for p in clean.glob("vasprun.xml.*")) == [
        "vasprun.xml.relax1.gz", "vasprun.xml.relax2.gz", "vasprun.xml.static.gz"]
    seen = [incar(clean / ".fake_vasp" / f"INCAR.{n}") for n in range(3)]
    assert [s["NSW"] for s in seen] == ["200", "200", "0"] and seen[2]["IBRION"] == "-1"
    assert all(s["EDIFFG"] == "-0.005" and s["ENCUT"] == "520.0" and s["LCHARG"] == "False" for s in seen)
    assert not (clean / "POTCAR").exists()  # ran with POTCAR.spec only

    status = matra("status", str(tree))
    assert status.returncode == 1  # a candidate failed
    assert "unconverged_electronic" in status.stdout and "totals: converged 2, failed 2" in status.stdout

    # nothing new to submit; --resubmit takes exactly the two failed ones
    again = matra("submit", "vasp", str(tree), "--profile", str(profile), "--run-dir", str(tmp_path / "run0"))
    assert again.returncode == 2 and "--resubmit" in again.stderr
    scenarios.write_text(json.dumps({ids[0]: OK, ids[1]: CRASH_FIRST, ids[2]: DEAD, ids[3]: OK,
                                     "default": DEAD}))
    # the resubmission goes through the local executor (same script, run by bash): both paths covered
    out = matra("submit", "vasp", str(tree), "--profile", str(profile), "--per-task", "4", "--polling-s", "0.1",
                "--max-errors", "2", "--resubmit", "--run-dir", str(tmp_path / "run2"), "--cluster", "local")
    assert "2 candidate(s) in 1 array task(s)" in out.stdout, out.stdout + out.stderr
    states = tree_states(read_tree_manifest(tree))
    assert states[ids[3]]["status"] == "converged" and states[ids[3]]["attempt"] == 2
    # the first attempt, kept aside (custodian's setup gunzips the whole folder, attempts/ included)
    assert (dirs[ids[3]] / "attempts" / "1" / "vasp.out").is_file()
    assert incar(dirs[ids[3]] / "INCAR.orig") == incar(dirs[ids[0]] / "INCAR.orig")  # restarted from the inputs
    assert (states[ids[2]]["status"], states[ids[2]]["reason"]) == ("failed", "validation_failed")
    assert read_manifest(tmp_path / "run2")["launch"]["cluster"] == "local"

    # the report on what the jobs left: Si against a Si reference 0.04 eV/atom below the static run
    from pymatgen.entries.computed_entries import ComputedEntry

    e_static = -4.86148134  # eV/atom of the replayed static run (Si.static.vasprun.xml.gz)
    refs = tmp_path / "refs.json"
    refs.write_text(json.dumps([ComputedEntry("Si2", 2 * (e_static - 0.04)).as_dict()]))
    # a bare entry without run parameters (MP2020 would refuse it): taken as given
    report = matra("dft-report", str(tree), "--hull-reference", str(refs), "--reference-correction", "none")
    assert report.returncode == 0, report.stderr
    rows = {r["id"]: r for r in json.loads((tree / "dft-report.json").read_text())["rows"]}
    assert [rows[i]["state"] for i in ids] == ["converged", "converged", "failed", "converged"]
    assert rows[ids[2]]["reason"] == "validation_failed"  # its second attempt died without a vasprun.xml
    assert [rows[i]["e_hull_dft"] for i in (ids[0], ids[1], ids[3])] == pytest.approx([0.04] * 3, abs=1e-6)
