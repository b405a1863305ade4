"""Token store machinery: shards + manifests, idempotent consolidation, clear errors for bad stores."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from matra_hpc.data import store as st
from matra_hpc.data.config import DataPrepareConfig
from matra_hpc.data.readers import parse_source
from matra_hpc.data.stage import init_store, split_of
from matra_hpc.errors import StoreError
from matra_hpc.util import write_json_atomic


def _rows(ids: list[str], seed: int) -> st.ShardRows:
    rng = np.random.default_rng(seed)
    rows = st.ShardRows()
    for rid in ids:
        n_tok, n_site = int(rng.integers(5, 12)), int(rng.integers(1, 5))
        rows.add(tokens=rng.integers(0, 900, n_tok), values=rng.random(n_tok), id=rid, source="mp",
                 split=split_of(rid, 0.3, 0), formula="NaCl", prototype_hash="v1:" + rid, spacegroup=225,
                 e_above_hull=float(rng.random()), e_form=np.nan, lattice=np.eye(3) * 4,
                 frac_coords=rng.random((n_site, 3)), numbers=rng.integers(1, 90, n_site), n_sites_primitive=1)
    return rows


def _store(tmp_path: Path, shards: dict[str, list[str]]) -> Path:
    out = tmp_path / "t.zarr"
    init_store(DataPrepareConfig(sources=["flla"], out=str(out)), [parse_source("flla")])
    for k, (sid, ids) in enumerate(shards.items()):
        rows = _rows(ids, k)
        st.write_shard(out, sid, rows.arrays(), {"shard": sid, "n_rows": len(rows), "rejected": {}, "filtered": {},
                                                "n_inputs": len(ids)})
    write_json_atomic(out / "shards" / st.PLAN, {"shards": list(shards)})
    return out


SHARDS = {"00-mp-000000": ["mp:a", "mp:b", "mp:c"], "00-mp-000001": [], "00-mp-000002": ["mp:d", "mp:b", "mp:e"]}


def test_consolidate_concatenates_shards_in_order_and_is_idempotent(tmp_path: Path) -> None:
    out = _store(tmp_path, SHARDS)
    with pytest.raises(StoreError, match="incomplete"):
        st.open_token_store(out)
    first = st.consolidate(out)
    assert first["duplicates"] == ["mp:b"]  # the later copy of an id is left out of the view
    root = st.open_token_store(out, verify=True)
    assert root["id"][...].tolist() == ["mp:a", "mp:b", "mp:c", "mp:d", "mp:e"]
    # Row by row, the view equals the shard rows it came from.
    shard_rows = [r for sid in SHARDS for r in st.iter_rows(zarr.open_group(str(st.shard_dir(out, sid))))]
    shard_rows = [shard_rows[i] for i in (0, 1, 2, 3, 5)]
    for got, want in zip(st.iter_rows(root), shard_rows, strict=True):
        assert got["id"] == want["id"]
        np.testing.assert_array_equal(got["tokens"], want["tokens"])
        np.testing.assert_array_equal(got["values"], want["values"])
        np.testing.assert_array_equal(got["frac_coords"], want["frac_coords"])
    assert root.attrs["n_rows"] == 5 and sum(root.attrs["split_counts"].values()) == 5
    again = st.consolidate(out)
    assert again["content_hash"] == first["content_hash"]


def test_unfinished_shard_blocks_consolidation(tmp_path: Path) -> None:
    out = _store(tmp_path, SHARDS)
    (st.shard_dir(out, "00-mp-000002") / st.MANIFEST).unlink()  # as if killed before its manifest
    assert [s.id for s in st.finished_shards(out)] == ["00-mp-000000", "00-mp-000001"]
    with pytest.raises(StoreError, match="1 of 3 shards are unfinished.*rerun the same"):
        st.consolidate(out)


def test_foreign_missing_and_truncated_stores(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        st.open_token_store(tmp_path / "nope.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match="not a Zarr v3 store"):
        st.open_token_store(tmp_path / "plain")
    foreign = zarr.open_group(str(tmp_path / "foreign.zarr"), mode="w")
    foreign.attrs["schema"] = "someone-else/1"
    with pytest.raises(StoreError, match="not a matra-hpc token store"):
        st.open_token_store(tmp_path / "foreign.zarr")

    out = _store(tmp_path, SHARDS)
    st.consolidate(out)
    damaged = tmp_path / "damaged.zarr"
    shutil.copytree(out, damaged)
    for chunk in (damaged / "tokens" / "c").rglob("*"):
        if chunk.is_file():
            chunk.unlink()  # Zarr would silently read fill values
    st.open_token_store(damaged)  # shapes still agree ...
    with pytest.raises(StoreError, match="damaged"):
        st.open_token_store(damaged, verify=True)  # ... the content hash does not
    truncated = tmp_path / "truncated.zarr"
    shutil.copytree(out, truncated)
    shutil.rmtree(truncated / "numbers")
    with pytest.raises(StoreError, match="truncated.*numbers.*data consolidate"):
        st.open_token_store(truncated)


def test_rerun_against_other_settings_is_refused(tmp_path: Path) -> None:
    out = _store(tmp_path, SHARDS)
    with pytest.raises(StoreError, match="other inputs or settings.*--overwrite"):
        init_store(DataPrepareConfig(sources=["flla"], out=str(out), seed=5), [parse_source("flla")])
    init_store(DataPrepareConfig(sources=["flla"], out=str(out), workers=3), [parse_source("flla")])  # same content
    assert json.loads((st.shard_dir(out, "00-mp-000000") / st.MANIFEST).read_text())["n_rows"] == 3


def test_split_is_a_function_of_the_hash() -> None:
    hashes = [f"v1:{i:05d}" for i in range(4000)]
    splits = [split_of(h, 0.1, 0) for h in hashes]
    assert splits == [split_of(h, 0.1, 0) for h in hashes]
    assert 0.08 < splits.count("val") / len(splits) < 0.12
    assert splits != [split_of(h, 0.1, 1) for h in hashes]  # the seed salts it
