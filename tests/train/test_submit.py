"""`matra-hpc submit train`: a torchrun job with 2 processes, on the local executor and on Slurm."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from storebuild import random_sequences, write_store

from matra_hpc.model.checkpoint import find_latest_valid
from matra_hpc.train.metrics import read_metrics

EXECUTORS = ["local", pytest.param("slurm", marks=pytest.mark.slurm)]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=EXECUTORS)
def executor(request: pytest.FixtureRequest) -> str:
    if request.param == "slurm":
        request.getfixturevalue("slurm")  # tests/conftest.py: starts the local Slurm, never skips
    return request.param


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return write_store(tmp_path_factory.mktemp("submit") / "s.zarr", random_sequences(300, seed=9))


def submit_train(executor: str, tmp_path: Path, store: Path, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    run_dir, out = tmp_path / "run", tmp_path / "model"
    launch = ["--profile", "localci"] if executor == "slurm" and "--profile" not in args else []
    command = [sys.executable, "-m", "matra_hpc", "submit", "train", "--model", "tiny", "--data", str(store),
               "--out", str(out), "--global-batch", "32", "--log-every", "1", "--ntasks-per-node", "2",
               *launch, "--run-dir", str(run_dir), "--wait", *args]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    return done, run_dir


def test_submitted_training_job_runs_two_ranks_and_checkpoints(executor: str, store: Path, tmp_path: Path):
    done, run_dir = submit_train(executor, tmp_path, store, "--epochs", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    found = find_latest_valid(tmp_path / "model")
    assert found is not None
    assert (found.meta["world_size"], found.meta["epoch"], found.meta["step"]) == (2, 2, 18)
    assert (tmp_path / "model" / "best" / "model.safetensors").is_file()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stage"] == "train" and manifest["kind"] == "torchrun"
    assert manifest["config"]["out"] == str(tmp_path / "model")
    assert manifest["jobs"][0]["state"] == "COMPLETED"


@pytest.mark.slurm
def test_time_limit_requeues_and_training_resumes(store: Path, tmp_path: Path, slurm: None):
    # 1-minute limit, checkpoint signal asked 15 s before it. slurmctld checks limits only every
    # ~30 s and signals early rather than late, so the signal lands 15-45 s after the start: an
    # attempt trains at most ~40 s after its start-up, and the run needs 40 s of training in
    # total, so it is stopped part-way at least once and a requeued attempt resumes it. (Asking
    # 30 s before left attempts under load with almost no training time between start-up and
    # signal, and the run could use up its requeues.)
    profile = tmp_path / "requeue.yaml"
    profile.write_text(
        (REPO / "jobs" / "clusters" / "localci.yaml").read_text()
        + '\ntime: "1"\nsignal_delay_s: 15\nmax_requeues: 12\n'
    )
    done, run_dir = submit_train("slurm", tmp_path, store, "--epochs", "100000", "--schedule-steps", "4000",
                                 "--max-minutes", "0.67", "--profile", str(profile))
    assert done.returncode == 0, done.stdout + done.stderr
    [job] = json.loads((run_dir / "manifest.json").read_text())["jobs"]
    assert job["state"] == "COMPLETED" and job["attempts"] >= 2
    out = tmp_path / "model"
    records = read_metrics(out / "metrics.jsonl")
    resumes = [r for r in records if r["kind"] == "event" and r["event"] == "resume"]
    assert resumes and resumes[-1]["step"] > 0  # resumed from a checkpoint, not from scratch
    steps = [r["step"] for r in records if r["kind"] == "train"]
    assert steps == list(range(1, len(steps) + 1))  # the curve continues: every step once
    final = find_latest_valid(out)
    assert final.step == steps[-1] and final.meta["world_size"] == 2
    state_seconds = json.loads((final.path / "meta.json").read_text())["train_config"]["max_minutes"] * 60
    assert state_seconds == pytest.approx(0.67 * 60)
