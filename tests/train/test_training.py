"""The training stage: it learns, resumes exactly (also after kill -9), refuses what it must."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import zarr
from storebuild import random_sequences, write_store

from matra_hpc.cli import main as cli_main
from matra_hpc.context import RunContext
from matra_hpc.errors import CheckpointError
from matra_hpc.model import load_model
from matra_hpc.model.checkpoint import find_latest_valid
from matra_hpc.train import TrainConfig, run_train
from matra_hpc.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def train_losses(out: Path) -> dict[int, float]:
    """Step -> train loss; each step must appear once (a resume drops the records past it)."""
    records = [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"]
    steps = [r["step"] for r in records]
    assert len(steps) == len(set(steps)), f"steps logged twice: {steps}"
    return {r["step"]: r["loss"] for r in records}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return write_store(tmp_path_factory.mktemp("train") / "s.zarr", random_sequences(400, seed=5))


def config(store: Path, out: Path, **kw) -> TrainConfig:
    base = TrainConfig(data=str(store), out=str(out), model="tiny", epochs=2, global_batch=32, lr_max=3e-3,
                       log_every=1, ckpt_every_minutes=60.0, schedule_steps=40)
    return replace(base, **kw)


def test_tiny_model_overfits_a_few_sequences(tmp_path):
    # the paper's value head (MSE, floor 0) on random sequences: the loop itself can overfit;
    # the tiny config's mixture head is held to its own test (test_value_quality.py)
    data = write_store(tmp_path / "few.zarr", random_sequences(8, seed=11), val_every=0)
    result = run_train(
        TrainConfig(data=str(data), out=str(tmp_path / "run"), model="tiny-paper", epochs=250, global_batch=8,
                    lr_max=1e-2, log_every=25, patience=1000, ckpt_every_minutes=60.0, ckpt_every_epochs=1000),
        RunContext(),
    )
    losses = train_losses(tmp_path / "run")
    first, last = losses[min(losses)], losses[max(losses)]
    assert result.status == "finished" and result.step == 250
    assert last < 0.35, f"loss {first:.2f} -> {last:.2f}"
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000


def test_resumed_run_continues_the_same_curve(store, tmp_path):
    ref = run_train(config(store, tmp_path / "ref", max_steps=20), RunContext())
    first = run_train(config(store, tmp_path / "two", max_steps=7), RunContext())
    assert first.status == "max_steps" and first.step == 7
    second = run_train(config(store, tmp_path / "two", max_steps=20), RunContext())
    assert second.step == ref.step == 20
    a, b = train_losses(tmp_path / "ref"), train_losses(tmp_path / "two")
    assert sorted(b) == sorted(a) == list(range(1, 21))
    assert [b[s] for s in a] == pytest.approx([a[s] for s in a], rel=1e-5)
    # an epoch ended at step 13 (400 rows: 360 train rows, 12 batches of 32): validated once
    assert [r["epoch"] for r in read_metrics(tmp_path / "two" / "metrics.jsonl") if r["kind"] == "val"] == [1]
    model_a, _ = load_model(tmp_path / "ref" / "checkpoints" / "step_00000020")
    model_b, meta = load_model(tmp_path / "two" / "checkpoints" / "step_00000020")
    assert meta["step"] == 20 and meta["epoch"] == 1 and meta["batch_in_epoch"] == 8
    for p, q in zip(model_a.parameters(), model_b.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)


def test_run_killed_mid_epoch_resumes_to_the_same_steps(store, tmp_path):
    ref = run_train(config(store, tmp_path / "ref", max_steps=16), RunContext())
    out = tmp_path / "killed"
    command = [PYTHON, "-m", "matra_hpc", "train", "--data", str(store), "--out", str(out), "--model", "tiny",
               "--epochs", "50", "--global-batch", "32", "--lr-max", "3e-3", "--log-every", "1",
               "--schedule-steps", "40", "--ckpt-every-steps", "3", "--ckpt-every-minutes", "60"]
    held = tmp_path / "held"  # training stops for good after its 2nd checkpoint (step 6)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, cwd=ROOT, env={**env, "MATRA_HPC_HOLD": f"train-checkpoint:2:{held}"},
                            start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not held.exists():
        time.sleep(0.05)
    assert held.exists(), proc.stderr.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)  # mid-epoch: an epoch is 12 steps
    proc.wait()
    killed_at = find_latest_valid(out).step
    assert killed_at == 6
    resumed = subprocess.run([*command, "--max-steps", "16"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert '"step": 16' in resumed.stdout and ref.step == 16
    a, b = train_losses(tmp_path / "ref"), train_losses(out)
    assert sorted(b) == list(range(1, 17))
    assert [b[s] for s in sorted(a)] == pytest.approx([a[s] for s in sorted(a)], rel=1e-5)
    events = [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "event"]
    assert events[-1]["event"] == "resume" and events[-1]["step"] >= killed_at


def test_truncated_checkpoint_falls_back_to_the_previous_one(store, tmp_path, caplog):
    out = tmp_path / "run"
    run_train(config(store, out, max_steps=9, ckpt_every_steps=3), RunContext())
    newest = out / "checkpoints" / "step_00000009"
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with caplog.at_level(logging.WARNING):
        found = find_latest_valid(out)
    assert found.step == 6
    assert "step_00000009" in caplog.text and "truncated" in caplog.text
    result = run_train(config(store, out, max_steps=10), RunContext())
    assert result.step == 10
    events = [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "event"]
    assert events[-1]["checkpoint"] == "step_00000006"
    assert sorted(train_losses(out)) == list(range(1, 11))


def test_resume_against_another_vocabulary_or_model_is_refused(store, tmp_path):
    out = tmp_path / "run"
    run_train(config(store, out, max_steps=2), RunContext())
    other = write_store(tmp_path / "other.zarr", random_sequences(400, seed=5), vocab_hash="0" * 64)
    with pytest.raises(CheckpointError, match="vocabulary"):
        run_train(config(other, out, max_steps=4), RunContext())
    small = tmp_path / "small.yaml"
    small.write_text("n_layer: 1\nn_head: 2\nd_model: 32\nn_gauss: 16\n")
    with pytest.raises(CheckpointError, match="model config"):
        run_train(config(store, out, max_steps=4, model=str(small)), RunContext())
    # the checkpoint itself is untouched and still resumes
    assert run_train(config(store, out, max_steps=3), RunContext()).step == 3


def test_two_process_torchrun_follows_the_one_process_curve(store, tmp_path):
    ref = run_train(config(store, tmp_path / "one", max_steps=6, micro_batch=8), RunContext())
    out = tmp_path / "two"
    command = [str(Path(PYTHON).parent / "torchrun"), "--standalone", "--nproc-per-node", "2", "-m", "matra_hpc",
               "train", "--data", str(store), "--out", str(out), "--model", "tiny", "--epochs", "2",
               "--global-batch", "32", "--micro-batch", "8", "--lr-max", "3e-3", "--log-every", "1",
               "--schedule-steps", "40", "--max-steps", "6"]
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = train_losses(tmp_path / "one"), train_losses(out)
    assert sorted(a) == sorted(b) == list(range(1, 7)) and ref.step == 6
    assert [b[s] for s in sorted(a)] == pytest.approx([a[s] for s in sorted(a)], rel=1e-4)
    one, _ = load_model(tmp_path / "one" / "checkpoints" / "step_00000006")
    two, meta = load_model(out / "checkpoints" / "step_00000006")
    assert meta["world_size"] == 2
    for p, q in zip(one.parameters(), two.parameters(), strict=True):
        # Adam turns float noise in near-zero gradients into small absolute differences
        torch.testing.assert_close(p, q, atol=1e-3, rtol=1e-3)


def test_cli_trains_and_reports_bad_input(store, tmp_path, capsys):
    out = tmp_path / "cli"
    code = cli_main(["train", "--model", "tiny", "--data", str(store), "--out", str(out), "--epochs", "1",
                     "--global-batch", "64"])
    assert code == 0
    assert '"status": "finished"' in capsys.readouterr().out
    assert (out / "best" / "model.safetensors").is_file() and (out / "loss.png").is_file()
    model, meta = load_model(out)
    assert load_model(out / "checkpoints")[1]["step"] == meta["step"]  # the folder of checkpoints works too
    assert meta["vocab_hash"] == zarr.open_group(str(store), mode="r").attrs["vocab_hash"]
    assert meta["token_store"]["content_hash"].startswith("sha256:")
    # finished runs are not trained again
    assert cli_main(["train", "--model", "tiny", "--data", str(store), "--out", str(out), "--epochs", "1"]) == 0
    assert cli_main(["train", "--model", "huge", "--data", str(store), "--out", str(tmp_path / "x")]) == 2
    assert cli_main(["train", "--data", str(tmp_path / "none.zarr"), "--out", str(tmp_path / "y")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_tiny_learns_on_a_store_of_real_encoded_structures(tmp_path):
    from matra_hpc.data.config import DataPrepareConfig
    from matra_hpc.data.stage import run_data_prepare

    store = tmp_path / "flla.zarr"
    run_data_prepare(DataPrepareConfig(sources=["flla"], out=str(store), limit=160, shard_size=80), RunContext())
    result = run_train(
        TrainConfig(data=str(store), out=str(tmp_path / "run"), model="tiny", epochs=12, global_batch=32,
                    lr_max=3e-3, log_every=1, ckpt_every_epochs=100),
        RunContext(),
    )
    assert result.status == "finished"
    val = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "val"]
    assert len(val) == 12 and val[0]["n_rows"] > 0
    # the validation loss (crystals never seen in training) falls well below its first value
    assert min(r["loss"] for r in val) < 0.8 * val[0]["loss"]


def test_early_stopping_after_patience_epochs_without_improvement(store, tmp_path):
    # an improvement must beat the best by min_delta: with a huge one only the first epoch counts
    out = tmp_path / "run"
    result = run_train(config(store, out, epochs=50, patience=2, min_delta=1e9), RunContext())
    assert (result.status, result.epoch) == ("early_stopped", 3)
    val = [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "val"]
    assert [r["bad_epochs"] for r in val] == [0, 1, 2]
    again = run_train(config(store, out, epochs=50, patience=2, min_delta=1e9), RunContext())
    assert (again.status, again.step) == ("early_stopped", result.step)  # a finished run is not redone
