"""Fixtures of the evaluation tests: a small real checkpoint and a small generated run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny architecture with random weights, biased towards small cells (fast checks)."""
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


@pytest.fixture(scope="session")
def generated_store(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 temperatures x 4 rows sampled by the generate stage's own command."""
    from matra_hpc.cli import main

    out = tmp_path_factory.mktemp("gen") / "gen.zarr"
    assert main(["generate", "--checkpoint", str(checkpoint), "--out", str(out), "--temps", "0.7,1.3",
                 "--per-temp", "4", "--batch-size", "4", "--seed", "1", "--run-id", "ev"]) == 0
    return out
