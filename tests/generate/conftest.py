"""Fixtures of the generate tests: a small real checkpoint, a reference run, the local Slurm."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny architecture, random weights, biased towards small cells of a few atoms.

    Untrained weights favour huge counts and 1 A cells, whose checks take seconds per row; the
    biases (a handful of logits and the value head) keep rows small and the tests fast while
    the model, the checkpoint format and the sampler stay the real ones.
    """
    from matra_hpc.model import MatraTransformer, load_model_config
    from matra_hpc.model.checkpoint import save_model_dir
    from matra_hpc.tokens import load_vocab

    vocab = load_vocab()
    torch.manual_seed(0)
    config = load_model_config("tiny", vocab.size)
    model = MatraTransformer(config)
    with torch.no_grad():
        model.lm_head.bias[vocab.count(1) : vocab.count(5)] += 6.0
        model.lm_head.bias[vocab.arity(2)] += 4.0
        model.cont_head.weight.mul_(5.0)
        model.cont_head.bias.fill_(4.3)
    path = tmp_path_factory.mktemp("ckpt") / "model"
    save_model_dir(path, model, {"model_config": config.to_dict(), "vocab_hash": vocab.hash, "step": 0, "epoch": 0})
    return path


# The reference generation every other test compares with: 2 temperatures x 2 shards x 3 rows.
GEN_ARGS = ["--temps", "0.7,1.3", "--per-temp", "6", "--shards", "2", "--batch-size", "2", "--seed", "5",
            "--run-id", "ref"]


def cli(*args: str, cwd: Path, timeout: float = 300, mpi_ranks: int = 0) -> subprocess.CompletedProcess:
    """``matra-hpc ARGS`` in a fresh process (under ``mpirun -n N`` when mpi_ranks > 0)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "matra_hpc", *args]
    if mpi_ranks:
        command = [str(Path(sys.executable).parent / "mpirun"), "-n", str(mpi_ranks), *command]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="session")
def reference_store(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference generation, run in this process as the bare command does."""
    from matra_hpc.cli import main

    out = tmp_path_factory.mktemp("ref") / "gen.zarr"
    assert main(["generate", "--checkpoint", str(checkpoint), "--out", str(out), *GEN_ARGS]) == 0
    return out


