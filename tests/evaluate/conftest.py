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
def held_out_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four crystals prepared by `data prepare`; the two of exactly Al-Ca-Cu are held out."""
    from stores import cscl_alcu, heusler, rock_salt

    from matra_hpc.cli import main

    folder = tmp_path_factory.mktemp("cifs")
    for name, structure in (("nacl", rock_salt()), ("heusler", heusler()), ("heusler-t", heusler(1.3)),
                            ("alcu", cscl_alcu())):
        structure.to(filename=str(folder / f"{name}.cif"))
    out = tmp_path_factory.mktemp("tok") / "tokens.zarr"
    assert main(["data", "prepare", f"folder:demo={folder}", "--out", str(out), "--hold-out-system", "Cu-Al-Ca"]) == 0
    return out
