"""The screen stage as a process: kill -9 and rerun loses nothing and duplicates nothing;
``submit screen --array`` on the local Slurm; ``mpirun`` ranks share the queue."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from screen_helpers import nacl, rattled, silicon, write_generated

from matra_hpc.screen import store as sstore

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}


def _generated(tmp_path: Path) -> Path:
    rows = {0.7: [{"structure": rattled(nacl(5.5 + 0.1 * i), i, 0.05)} for i in range(4)],
            1.0: [{"structure": rattled(silicon(5.3 + 0.1 * i), i, 0.05)} for i in range(2)]}
    return write_generated(tmp_path / "gen.zarr", rows, shards=1, run_id="k")


def _screen(gen: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "matra_hpc", "screen", str(gen), "--out", str(out), "--relax", "sevennet:0.05:15",
            *extra]


def _ids(out: Path) -> list[str]:
    return [r.id for r in sstore.iter_rows(out)]


def test_kill_9_then_rerun_loses_and_duplicates_nothing(tmp_path):
    gen = _generated(tmp_path)
    out = tmp_path / "screened.zarr"
    proc = subprocess.Popen(_screen(gen, out, "--shards", "2"), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not sstore.finished_shards(out, 0.7) and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = sstore.finished_shards(out, 0.7)
    assert done_before, "no shard finished before the kill"
    manifests_before = {s: sstore.read_manifest(out, 0.7, s) for s in done_before}
    rerun = subprocess.run(_screen(gen, out, "--shards", "2"), env=ENV, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    summary = json.loads(rerun.stdout[rerun.stdout.index("{"):])
    assert summary["complete"] and summary["tasks_skipped"] >= len(done_before)
    # finished shards were kept as they were, the others written once
    assert {s: sstore.read_manifest(out, 0.7, s) for s in done_before} == manifests_before
    ids = _ids(out)
    assert len(ids) == len(set(ids)) == 6
    assert sorted(ids) == sorted(f"k:T{t:.2f}:s0:{i}" for t, n in ((0.7, 4), (1.0, 2)) for i in range(n))
    assert not list(out.rglob(".partial-*"))
    lines = (out / "status" / "screen.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["id"] for line in lines) == sorted(ids)


@pytest.mark.slurm
def test_submit_screen_as_a_slurm_array(tmp_path, slurm):
    gen = _generated(tmp_path)
    out, run_dir = tmp_path / "screened.zarr", tmp_path / "run"
    cmd = [sys.executable, "-m", "matra_hpc", "submit", "screen", str(gen), "--out", str(out), "--relax",
           "sevennet:0.05:15", "--shards", "2", "--array", "2", "--cluster", "slurm", "--profile", "localci",
           "--run-dir", str(run_dir), "--wait"]
    done = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    jobs = json.loads((run_dir / "manifest.json").read_text())["jobs"]
    assert len(jobs) == 2 and all(j["state"] == "COMPLETED" for j in jobs)
    ranks = {sstore.read_manifest(out, t, s)["rank"] for t in (0.7, 1.0) for s in (0, 1)}
    assert ranks == {0, 1}  # each array task screened its own tasks
    ids = _ids(out)  # the last task to finish consolidated
    assert len(ids) == len(set(ids)) == 6
    assert all(r.relaxed and r.n_steps > 0 for r in sstore.iter_rows(out))


@pytest.mark.mpi
def test_mpirun_ranks_share_the_queue(tmp_path):
    gen = _generated(tmp_path)
    out = tmp_path / "screened.zarr"
    mpirun = Path(sys.executable).parent / "mpirun"
    done = subprocess.run([str(mpirun), "-n", "2", *_screen(gen, out, "--shards", "2")], env=ENV,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    ranks = {sstore.read_manifest(out, t, s)["rank"] for t in (0.7, 1.0) for s in (0, 1)}
    assert ranks <= {0, 1} and len(_ids(out)) == 6
