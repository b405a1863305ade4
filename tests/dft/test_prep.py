"""vasp-prep: selection, tree layout, manifest, status log, resume after kill -9, refusals."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dft_helpers import build_screened_store
from pymatgen.core import Lattice, Structure

from matra_hpc.context import RunContext, local_context
from matra_hpc.dft import TreeError, VaspPrepConfig, read_tree_manifest, run_vasp_prep, safe_name, tree_states
from matra_hpc.screen.store import read_status

REPO = Path(__file__).resolve().parents[2]


def si(a: float = 5.468) -> Structure:
    h = a / 2
    return Structure(Lattice([[0, h, h], [h, 0, h], [h, h, 0]]), ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]])


def mgo(a: float = 4.21) -> Structure:
    h = a / 2
    return Structure(Lattice([[0, h, h], [h, 0, h], [h, h, 0]]), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    rows = [
        dict(structure=si(), e_hull=0.030, temperature=0.7),                    # 0.70:0
        dict(structure=mgo(), e_hull=0.010, temperature=0.7),                   # 0.70:1
        dict(structure=si(5.5), e_hull=-0.02, temperature=0.7, novel=False),    # not novel
        dict(structure=si(5.6), e_hull=-0.01, temperature=0.7, unique=False),   # a duplicate
        dict(structure=si(5.7), e_hull=-0.03, temperature=0.7, status="rejected", reason="disconnected",
             connected=False),
        dict(structure=None, e_hull=float("nan"), temperature=0.7, status="not_screened", reason="not_decoded"),
        dict(structure=mgo(4.3), e_hull=0.020, temperature=1.0),                # 1.00:0
        dict(structure=si(5.4), e_hull=0.010, temperature=1.0),                 # 1.00:1 ties 0.70:1 on e_hull
        dict(structure=mgo(4.4), e_hull=0.500, temperature=1.0),                # 1.00:2
    ]
    return build_screened_store(tmp_path_factory.mktemp("store") / "screened.zarr", rows)


def tree_digest(tree: Path) -> dict[str, str]:
    return {str(p.relative_to(tree)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(tree.rglob("*")) if p.is_file()}


def test_top_candidates_over_all_temperatures_with_their_ids(store, tmp_path):
    out = tmp_path / "vasp"
    result = run_vasp_prep(VaspPrepConfig(store=str(store), out=str(out), top=4), local_context())
    assert result["complete"] and result["candidates"] == 4
    manifest = read_tree_manifest(out)
    ids = [c["id"] for c in manifest["candidates"]]
    # lowest e_hull first; the 0.010 tie broken by id; not novel / duplicate / rejected / unscreened left out
    assert ids == ["gen-test:T0.70:s0:1", "gen-test:T1.00:s0:1", "gen-test:T1.00:s0:0", "gen-test:T0.70:s0:0"]
    assert manifest["selection"]["eligible"] == {"T0.70": 2, "T1.00": 3}
    first = manifest["candidates"][0]
    assert first["dir"] == f"b0000/{safe_name(first['id'])}"
    assert (first["group"], first["row"]) == ("T0.70", 1)
    assert manifest["source"]["path"] == str(store.resolve())
    record = json.loads((out / first["dir"] / "candidate.json").read_text())
    assert record["id"] == first["id"] and record["source"] == {"store": str(store.resolve()), "group": "T0.70",
                                                                "row": 1}
    assert record["formula"] == "MgO" and record["ml"]["e_hull"] == pytest.approx(0.010)
    assert (out / first["dir"] / "POSCAR").read_text().split("\n")[5].split() == ["Mg", "O"]
    # the status log: every candidate prepped, in the screened store's own log
    states = tree_states(manifest)
    assert {s["status"] for s in states.values()} == {"prepped"}
    assert read_status(store)[first["id"]]["stage"] == "dft"
    # a rerun with the same settings writes nothing and changes nothing
    before = tree_digest(out)
    again = run_vasp_prep(VaspPrepConfig(store=str(store), out=str(out), top=4), local_context())
    assert again["written_here"] == 0 and tree_digest(out) == before


def test_quotas_filters_and_tie_break_are_configurable_and_recorded(store, tmp_path):
    config = VaspPrepConfig(store=str(store), out=str(tmp_path / "v"), top=10, per_temperature={"T1.00": 1},
                            filters=("relaxed", "connected", "unique"), tie_break="n_sites")
    run_vasp_prep(config, local_context())
    manifest = read_tree_manifest(tmp_path / "v")
    ids = [c["id"] for c in manifest["candidates"]]
    # without the novelty filter the non-novel one (-0.02) comes first; T1.00 capped at its best one
    assert ids == ["gen-test:T0.70:s0:2", "gen-test:T0.70:s0:1", "gen-test:T1.00:s0:1", "gen-test:T0.70:s0:0"]
    assert manifest["config"]["per_temperature"] == {"T1.00": 1}
    assert manifest["config"]["tie_break"] == "n_sites"
    assert manifest["selection"]["selected_per_temperature"] == {"T0.70": 3, "T1.00": 1}


def test_ranks_split_the_work_into_the_same_tree(store, tmp_path):
    single, split = tmp_path / "single", tmp_path / "split"
    run_vasp_prep(VaspPrepConfig(store=str(store), out=str(single), top=5), local_context())
    # rank 1 with a process pool of 2: the pool changes nothing either
    results = [run_vasp_prep(VaspPrepConfig(store=str(store), out=str(split), top=5, workers=1 + r),
                             RunContext(rank=r, world_size=2)) for r in (0, 1)]
    assert [r["written_here"] for r in results] == [3, 2]
    assert not results[0]["complete"] and results[1]["complete"]
    assert tree_digest(split) == tree_digest(single)


def test_refuses_other_settings_and_foreign_directories(store, tmp_path):
    out = tmp_path / "vasp"
    run_vasp_prep(VaspPrepConfig(store=str(store), out=str(out), top=2), local_context())
    with pytest.raises(TreeError, match="other settings"):
        run_vasp_prep(VaspPrepConfig(store=str(store), out=str(out), top=3), local_context())
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(TreeError, match="not a VASP tree"):
        run_vasp_prep(VaspPrepConfig(store=str(store), out=str(foreign), top=2), local_context())
    assert (foreign / "notes.txt").read_text() == "mine"
    with pytest.raises(TreeError, match="not a VASP tree"):
        read_tree_manifest(foreign)


def test_cli_exit_codes(store, tmp_path, capsys):
    from matra_hpc.cli import main

    assert main(["vasp-prep", str(tmp_path / "nothing.zarr"), "--out", str(tmp_path / "v"), "--top", "2"]) == 2
    assert "not a Zarr store" in capsys.readouterr().err
    assert main(["vasp-prep", str(store), "--out", str(tmp_path / "v"), "--top", "0"]) == 2
    assert "--top" in capsys.readouterr().err
    assert main(["dft-report", str(tmp_path)]) == 2
    assert "not a VASP tree" in capsys.readouterr().err
    assert main(["status", str(tmp_path)]) == 2  # neither a run directory nor a VASP tree
    assert not (tmp_path / "v").exists()


def test_kill_9_during_prep_then_rerun_gives_the_identical_tree(tmp_path):
    rows = [dict(structure=si(5.3 + 0.01 * i) if i % 2 else mgo(4.0 + 0.01 * i), e_hull=0.001 * i)
            for i in range(12)]
    store = build_screened_store(tmp_path / "screened.zarr", rows)
    clean, killed, held = tmp_path / "clean", tmp_path / "killed", tmp_path / "held"
    run_vasp_prep(VaspPrepConfig(store=str(store), out=str(clean), top=12), local_context())
    args = [sys.executable, "-m", "matra_hpc", "vasp-prep", str(store), "--top", "12", "--out", str(killed)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # held in the 5th candidate: its inputs written into a partial folder, its candidate.json not yet
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**env, "MATRA_HPC_HOLD": f"vasp-prep-candidate:5:{held}"})
    deadline = time.monotonic() + 240
    while not held.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "vasp-prep never reached the hold point"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(list(killed.glob("b0000/*/candidate.json"))) == 4
    assert len(list(killed.glob("b0000/.partial-*"))) == 1
    assert not (killed / "manifest.json").exists()
    with pytest.raises(TreeError, match="did not finish"):
        read_tree_manifest(killed)
    subprocess.run(args, check=True, capture_output=True, env=env)
    assert tree_digest(killed) == tree_digest(clean)


@pytest.mark.mpi
def test_mpirun_ranks_write_the_same_tree(store, tmp_path):
    single, ranks = tmp_path / "single", tmp_path / "ranks"
    run_vasp_prep(VaspPrepConfig(store=str(store), out=str(single), top=5), local_context())
    mpirun = Path(sys.executable).parent / "mpirun"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([str(mpirun), "-n", "2", sys.executable, "-m", "matra_hpc", "vasp-prep", str(store),
                           "--top", "5", "--out", str(ranks)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["complete"]  # rank 0 prints after the barrier
    assert tree_digest(ranks) == tree_digest(single)
    writers = sorted(p.name for p in (store / "status").glob("dft-prep-r*.jsonl"))
    assert any(w.startswith("dft-prep-r0-") for w in writers) and any(w.startswith("dft-prep-r1-") for w in writers)


def test_two_trees_from_one_store_keep_their_own_states(store, tmp_path):
    from matra_hpc.dft.status import append_events

    small, large = tmp_path / "small", tmp_path / "large"
    run_vasp_prep(VaspPrepConfig(store=str(store), out=str(small), top=2), local_context())
    run_vasp_prep(VaspPrepConfig(store=str(store), out=str(large), top=3), local_context())
    a, b = read_tree_manifest(small), read_tree_manifest(large)
    assert a["plan_hash"] != b["plan_hash"]
    shared = a["candidates"][0]["id"]
    assert shared == b["candidates"][0]["id"]
    append_events(store, "dft-test", [{"id": shared, "status": "converged"}], plan=a["plan_hash"])
    assert tree_states(a)[shared]["status"] == "converged"
    assert tree_states(b)[shared]["status"] == "prepped"


def test_ncore_and_kpar_come_from_the_profile(store, tmp_path, capsys):
    from matra_hpc.cli import main

    profile = tmp_path / "site.yaml"
    profile.write_text("vasp:\n  command: srun vasp_std\n  ncore: 8\n  kpar: 4\n")
    out = tmp_path / "vasp"
    assert main(["vasp-prep", str(store), "--top", "1", "--out", str(out), "--profile", str(profile)]) == 0
    entry = read_tree_manifest(out)["candidates"][0]
    incar = dict(line.split(" = ") for line in (out / entry["dir"] / "INCAR").read_text().splitlines())
    assert (incar["NCORE"], incar["KPAR"]) == ("8", "4")
    assert read_tree_manifest(out)["config"]["ncore"] == 8


def test_the_stores_own_reader_sees_dft_after_screen_in_the_same_second(store, tmp_path):
    from matra_hpc.dft.status import append_events, utc_now
    from matra_hpc.screen.store import append_status

    cid = "gen-test:T0.70:s0:0"
    seconds, _ = utc_now()
    append_status(store, "screen-test", [{"id": cid, "stage": "screen", "status": "screened", "time": seconds}])
    append_events(store, "dft-test-same-second", [{"id": cid, "status": "submitted", "time": seconds}], plan="p")
    assert read_status(store)[cid]["stage"] == "dft"
