"""Stores and checkpoints of an older token format are refused with how to rebuild them
(issue 15, item 10): a token store, a generated store and a checkpoint written before
``token_format`` existed (version 1), or with another version, never get read as current."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import zarr

from matra_hpc.errors import CheckpointError, StoreError
from matra_hpc.tokens import prototype_hash
from matra_hpc.tokens.format import TOKEN_FORMAT, TokenFormatError
from matra_hpc.tokens.hashing import HASH_VERSION

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from storebuild import random_sequences, write_store  # noqa: E402


def _age(path: Path, value: str | None) -> None:
    root = zarr.open_group(str(path), mode="r+")
    if value is None:
        del root.attrs["token_format"]
    else:
        root.attrs["token_format"] = value


def test_format_and_hash_versions_move_together():
    from matra_hpc.data.demo import iter_flla
    from matra_hpc.tokens import encode

    assert TOKEN_FORMAT == HASH_VERSION == "v2"
    assert prototype_hash(encode(next(iter_flla(1)).structure)).startswith("v2:")


@pytest.mark.parametrize("old", [None, "v1"])
def test_old_token_store_is_refused_and_rebuilt_only_with_overwrite(tmp_path, old):
    from matra_hpc.data.config import DataPrepareConfig
    from matra_hpc.data.readers import parse_source
    from matra_hpc.data.stage import init_store
    from matra_hpc.data.store import open_token_store

    path = write_store(tmp_path / "tokens.zarr", random_sequences(12))
    open_token_store(path)  # current format: fine
    _age(path, old)
    with pytest.raises(TokenFormatError, match=r"data prepare .*--overwrite") as caught:
        open_token_store(path)
    assert "v2" in str(caught.value) and ("v1" in str(caught.value))
    config = DataPrepareConfig(sources=["flla"], out=str(path), limit=4)
    # The demo's `data demo --out tokens.zarr` goes through here: it must not resume an old store.
    with pytest.raises(TokenFormatError):
        init_store(config, [parse_source(s) for s in config.sources])
    assert path.exists()  # nothing deleted without --overwrite
    config.overwrite = True
    init_store(config, [parse_source(s) for s in config.sources])
    assert zarr.open_group(str(path), mode="r").attrs["token_format"] == TOKEN_FORMAT


def test_old_generated_store_is_refused(tmp_path):
    from matra_hpc.generate import store as gstore

    fingerprint = {"temperatures": [1.0]}
    gstore.init_store(tmp_path / "gen.zarr", {"schema": gstore.SCHEMA, "run_id": "r"}, fingerprint)
    assert gstore.open_root(tmp_path / "gen.zarr").attrs["token_format"] == TOKEN_FORMAT
    _age(tmp_path / "gen.zarr", None)
    with pytest.raises(TokenFormatError, match="generate again"):
        gstore.open_root(tmp_path / "gen.zarr")
    with pytest.raises(StoreError):  # nor resumed
        gstore.init_store(tmp_path / "gen.zarr", {"schema": gstore.SCHEMA, "run_id": "r"}, fingerprint)


def test_old_checkpoint_is_refused(tmp_path):
    from matra_hpc.model import MatraTransformer, load_model_config
    from matra_hpc.model.checkpoint import describe_checkpoint, load_model, save_model_dir
    from matra_hpc.tokens import load_vocab

    config = load_model_config("tiny", load_vocab().size)
    save_model_dir(tmp_path / "best", MatraTransformer(config), {"model_config": config.to_dict(), "step": 1})
    _, meta = load_model(tmp_path / "best")
    assert meta["token_format"] == TOKEN_FORMAT
    meta_file = tmp_path / "best" / "meta.json"
    meta.pop("token_format")
    meta_file.write_text(json.dumps(meta))
    for read in (load_model, describe_checkpoint):
        with pytest.raises(CheckpointError, match="train again on a token store rebuilt"):
            read(tmp_path / "best")
