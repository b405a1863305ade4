"""`data prepare` end to end on real structures: kill -9 + resume, MPI == serial, bad inputs counted."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from data_inputs import flla_rows, write_alexandria, write_mp

from matra_hpc.cli import main
from matra_hpc.context import local_context
from matra_hpc.data import store as st
from matra_hpc.data.config import DataPrepareConfig
from matra_hpc.data.stage import run_data_prepare
from matra_hpc.errors import UsageError
from matra_hpc.tokens import load_vocab

SHARD = 5


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[str]:
    """80 real MP structures in the matbench-discovery layout (one record corrupt), and 24 of
    them again as 3 Alexandria files (a multi-file source: MPI ranks split it by file)."""
    root = tmp_path_factory.mktemp("inputs")
    rows = flla_rows(80, skip_disordered=False)
    write_mp(root / "mp", rows, corrupt_index=7)
    write_alexandria(root / "alex", rows[:24], per_file=8)
    return [f"mp={root / 'mp'}", f"alexandria={root / 'alex'}"]


@pytest.fixture(scope="module")
def clean(inputs: list[str], tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clean") / "tokens.zarr"
    run_data_prepare(DataPrepareConfig(sources=inputs, out=str(out), shard_size=SHARD), local_context())
    return out


def _assert_same_rows(a: Path, b: Path) -> None:
    ga, gb = st.open_token_store(a, verify=True), st.open_token_store(b, verify=True)
    rows_a, rows_b = list(st.iter_rows(ga)), list(st.iter_rows(gb))
    assert len(rows_a) == len(rows_b) > 0
    ids = [r["id"] for r in rows_a]
    assert len(set(ids)) == len(ids)  # no duplicates
    for ra, rb in zip(rows_a, rows_b, strict=True):  # no holes, same order, same content
        assert ra.keys() == rb.keys()
        for key in ra:
            np.testing.assert_array_equal(ra[key], rb[key], err_msg=f"{ra['id']}: {key}")
    assert ga.attrs["content_hash"] == gb.attrs["content_hash"]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "matra_hpc", *args]


def test_kill9_half_way_then_rerun_equals_clean_run(inputs: list[str], clean: Path, tmp_path: Path) -> None:
    out = tmp_path / "tokens.zarr"
    held = tmp_path / "held"  # the run stops for good after its 6th shard: the kill lands there
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MATRA_HPC_HOLD": f"data-shard:6:{held}"}
    proc = subprocess.Popen(_cli("data", "prepare", *inputs, "--out", str(out), "--shard-size", str(SHARD)),
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not held.exists() and proc.poll() is None:
        time.sleep(0.05)
    assert held.exists(), "the run never reached its 6th shard"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {s.id: (st.shard_dir(out, s.id) / st.MANIFEST) for s in st.finished_shards(out)}
    assert len(finished) == 6
    before = {sid: (p.stat().st_mtime_ns, p.read_bytes()) for sid, p in finished.items()}
    # Whatever the kill interrupted, also leave a half-written shard: arrays but no manifest.
    partial = next(f"00-mp-0000-{k:06d}" for k in range(16) if f"00-mp-0000-{k:06d}" not in finished)
    (st.shard_dir(out, partial) / "tokens").mkdir(parents=True, exist_ok=True)
    (st.shard_dir(out, partial) / "tokens" / "zarr.json").write_text("{half")
    with pytest.raises(Exception, match="incomplete"):
        st.open_token_store(out)

    report = run_data_prepare(DataPrepareConfig(sources=inputs, out=str(out), shard_size=SHARD),
                              local_context())
    after = {sid: (p.stat().st_mtime_ns, p.read_bytes()) for sid, p in finished.items()}
    assert after == before  # finished shards were not redone
    assert report["n_inputs"] == 104 and report["n_shards"] == 16 + 6
    _assert_same_rows(out, clean)


@pytest.mark.mpi
def test_two_mpi_ranks_equal_serial(inputs: list[str], clean: Path, tmp_path: Path) -> None:
    out = tmp_path / "mpi.zarr"
    mpirun = Path(sys.executable).parent / "mpirun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(mpirun), "-n", "2", *_cli("data", "prepare", *inputs, "--out", str(out),
                                                          "--shard-size", str(SHARD))],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    pid = {s.id: json.loads((st.shard_dir(out, s.id) / st.MANIFEST).read_text())["pid"]
           for s in st.finished_shards(out)}
    assert len(set(pid.values())) == 2  # both ranks wrote shards
    # The 3-file Alexandria source is split by file: files 0 and 2 on one rank, file 1 on the other.
    assert pid["01-alex-0000-000000"] == pid["01-alex-0002-000001"] != pid["01-alex-0001-000000"]
    assert json.loads(done.stdout)["world_size"] == 2
    _assert_same_rows(out, clean)


def test_pool_of_two_equals_serial(inputs: list[str], clean: Path, tmp_path: Path) -> None:
    out = tmp_path / "pool.zarr"
    run_data_prepare(DataPrepareConfig(sources=inputs, out=str(out), shard_size=SHARD, workers=2),
                     local_context())
    _assert_same_rows(out, clean)


def test_report_counts_bad_inputs_and_filters(tmp_path: Path) -> None:
    from pymatgen.core import Lattice, Structure

    rows = flla_rows(12)
    write_mp(tmp_path / "mp", rows[:6], corrupt_index=1, nan_index=2)
    write_alexandria(tmp_path / "alex", rows[6:])
    folder = tmp_path / "own"
    folder.mkdir()
    (folder / "garbage.cif").write_text("this is not a CIF\n")
    rocksalt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    rocksalt.get_primitive_structure().to(filename=str(folder / "nacl.vasp"), fmt="poscar")
    triclinic = Structure(Lattice.from_parameters(4, 5, 6, 70, 80, 85), ["Si", "O"], [[0, 0, 0], [0.3, 0.2, 0.1]])
    triclinic.to(filename=str(folder / "p1.vasp"), fmt="poscar")
    out = tmp_path / "t.zarr"
    code = main(["data", "prepare", f"mp={tmp_path / 'mp'}", f"alexandria={tmp_path / 'alex'}", f"folder={folder}",
                 "--out", str(out), "--max-ehull", "0.05", "--shard-size", "4"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["rejected"]["parse_error"]["ids"] == [f"mp:{rows[1].material_id}", "own:garbage"]
    assert report["rejected"]["nan_or_inf"]["ids"] == [f"mp:{rows[2].material_id}"]
    assert report["rejected"]["spacegroup_1"]["ids"] == ["own:p1"]
    high = [r for r in rows[6:] if r.properties["e_above_hull"] > 0.05]
    assert report["filtered"].get("above_max_ehull", {"count": 0})["count"] == len(high)
    assert report["n_inputs"] == 15
    assert report["n_rows"] == 15 - 4 - len(high)
    assert report["encodable_fraction"] == pytest.approx(report["n_rows"] / (15 - len(high)))
    root = st.open_token_store(out, verify=True)
    assert sum(root.attrs["split_counts"].values()) == report["n_rows"]
    by_id = {r["id"]: r for r in st.iter_rows(root)}
    vocab = load_vocab()
    # A structure without e_above_hull gets no stability token; MP rows do.
    assert by_id["own:nacl"]["tokens"][0] == vocab.arity(2) and math.isnan(by_id["own:nacl"]["e_above_hull"])
    assert by_id[f"mp:{rows[0].material_id}"]["tokens"][0] in (vocab.ehull_low, vocab.ehull_high)
    assert by_id["own:nacl"]["spacegroup"] == 225 and by_id["own:nacl"]["n_sites_conventional"] == 8
    assert by_id["own:nacl"]["n_sites_primitive"] == 2
    attrs = dict(root.attrs)
    assert attrs["vocab_hash"] == vocab.hash and attrs["created_by"]["package"]
    assert [s["name"] for s in attrs["sources"]] == ["mp", "alex", "own"]
    assert all(len(s["sha256"]) == 64 for s in attrs["sources"])
    assert attrs["energy"]["per_source"]["mp"]["correction_scheme"] == "MaterialsProject2020Compatibility"
    # consolidate is idempotent from the command line too
    assert main(["data", "consolidate", str(out)]) == 0
    assert st.open_token_store(out, verify=True).attrs["content_hash"] == attrs["content_hash"]


def test_array_tasks_without_communicator(tmp_path: Path) -> None:
    """Independent tasks (rank, world size, no comm): the last to finish builds the view."""
    from matra_hpc.context import RunContext

    def config() -> DataPrepareConfig:
        return DataPrepareConfig(sources=["flla"], out=str(tmp_path / "a.zarr"), limit=30, shard_size=10)

    first = run_data_prepare(config(), RunContext(rank=0, world_size=2))
    assert first["status"].startswith("shards written")
    last = run_data_prepare(config(), RunContext(rank=1, world_size=2))
    assert last["n_inputs"] == 30 and st.open_token_store(tmp_path / "a.zarr", verify=True).attrs["n_rows"] == 30


def test_usage_errors_exit_2(tmp_path: Path, capsys) -> None:
    assert main(["data", "prepare", "flla", "--out", str(tmp_path / "x"), "--val-frac", "1.5"]) == 2
    assert main(["data", "prepare", "nonsense", "--out", str(tmp_path / "x")]) == 2
    assert "expected KIND=PATH" in capsys.readouterr().err
    with pytest.raises(UsageError):
        DataPrepareConfig(sources=[], out="x").validate()
    write_mp(tmp_path / "mp", flla_rows(2))
    (tmp_path / "mp" / "2025-02-01-mp-energies.csv.gz").write_bytes(b"cut short")
    assert main(["data", "prepare", f"mp={tmp_path / 'mp'}", "--out", str(tmp_path / "y")]) == 2
    assert "summary table" in capsys.readouterr().err
    # submit validates the same config before anything is submitted: no run directory appears
    run_dir = tmp_path / "run"
    assert main(["submit", "data-prepare", f"mp={tmp_path / 'mp'}", "--out", str(tmp_path / "z"),
                 "--run-dir", str(run_dir)]) == 2
    assert "summary table" in capsys.readouterr().err and not run_dir.exists()


@pytest.mark.slow
def test_demo_store_over_all_flla(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo.zarr"
    start = time.perf_counter()
    assert main(["data", "demo", "--out", str(out)]) == 0
    seconds = time.perf_counter() - start
    summary = json.loads(capsys.readouterr().out)
    report = json.loads((out / "report.json").read_text())
    assert report["n_inputs"] == 3938
    n_rejected = sum(v["count"] for v in report["rejected"].values())
    assert report["n_rows"] + n_rejected + report["duplicates"]["count"] == 3938
    assert report["encodable_fraction"] > 0.9
    root = st.open_token_store(out, verify=True)
    assert root.attrs["n_rows"] == report["n_rows"] == summary["n_rows"]
    assert 0.05 < root.attrs["split_counts"]["val"] / report["n_rows"] < 0.15
    png = out / "report.png"  # e-hull / crystal-system / length pictures beside report.json
    assert summary["plot"] == str(png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"data demo: {seconds:.1f} s, encodable fraction {report['encodable_fraction']}")
    # A rerun finds every shard finished and only rebuilds the view: no shard is written again.
    manifests = {s.id: st.shard_dir(out, s.id) / st.MANIFEST for s in st.finished_shards(out)}
    before = {sid: (p.stat().st_mtime_ns, p.stat().st_ino) for sid, p in manifests.items()}
    assert main(["data", "demo", "--out", str(out)]) == 0
    assert {sid: (p.stat().st_mtime_ns, p.stat().st_ino) for sid, p in manifests.items()} == before


@pytest.mark.mpi
def test_submit_data_prepare_as_local_mpi_job(tmp_path: Path) -> None:
    """The same stage through the launch layer: `submit data-prepare` runs it as 2 MPI ranks."""
    out, run_dir = tmp_path / "sub.zarr", tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(_cli("submit", "data-prepare", "flla", "--out", str(out), "--limit", "12", "--shard-size",
                               "4", "--cluster", "local", "--ntasks-per-node", "2", "--run-dir", str(run_dir)),
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    root = st.open_token_store(out, verify=True)
    assert root.attrs["n_rows"] == 12 and root.attrs["created_by"]["run_dir"] == str(run_dir)
    assert json.loads((out / "report.json").read_text())["world_size"] == 2
