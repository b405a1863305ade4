"""The training side of the token store: random access, epoch plans, rank shares, bad stores."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from storebuild import random_sequences, write_store

from matra_hpc.data.dataset import TokenStore, TokenStoreDataset, collate
from matra_hpc.errors import StoreError


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    seqs = random_sequences(300, seed=3)
    path = write_store(tmp_path_factory.mktemp("ds") / "s.zarr", seqs)
    return path, seqs


def test_random_access_reads_the_row(store):
    path, seqs = store
    ds = TokenStoreDataset(path, "train")
    val = TokenStoreDataset(path, "val")
    assert len(ds) == 270 and len(val) == 30
    for i in (0, 17, 269):
        row = int(ds.rows[i])
        tokens, values = ds[i]
        assert tokens.tolist() == seqs[row][0]
        np.testing.assert_array_equal(values.numpy(), np.asarray(seqs[row][1], dtype=np.float32))
    assert set(ds.rows.tolist()).isdisjoint(val.rows.tolist())


def test_epoch_plan_covers_each_row_once_with_length_buckets(store):
    path, _ = store
    ds = TokenStoreDataset(path, "train", window_batches=4)
    plan = ds.epoch_plan(16, seed=0, epoch=0)
    positions = np.concatenate([b.positions for b in plan])
    assert sorted(positions.tolist()) == list(range(len(ds)))
    assert len(plan) == ds.n_batches(16)
    # bucketing: the padding inside batches is far below that of random batches
    pad = sum(int(ds.lengths[b.positions].max() * len(b.positions) - ds.lengths[b.positions].sum()) for b in plan)
    rng = np.random.default_rng(0)
    random_pad = sum(int(ds.lengths[c].max() * len(c) - ds.lengths[c].sum())
                     for c in np.array_split(rng.permutation(len(ds)), len(plan)))
    assert pad < 0.5 * random_pad
    # every batch lies inside the window it is read from
    assert all(b.window_lo <= b.positions.min() and b.positions.max() < b.window_hi for b in plan)
    assert [b.positions.tolist() for b in ds.epoch_plan(16, 0, 0)] == [b.positions.tolist() for b in plan]
    assert [b.positions.tolist() for b in ds.epoch_plan(16, 0, 1)] != [b.positions.tolist() for b in plan]


def test_ranks_get_disjoint_rows_of_the_same_global_batches(store):
    path, _ = store
    ds = TokenStoreDataset(path, "train", window_batches=2)
    plan = ds.epoch_plan(20, seed=1, epoch=0)
    whole = list(ds.iter_batches(plan, micro_batch=None))
    shards = [list(ds.iter_batches(plan, rank=r, world_size=2, micro_batch=4)) for r in range(2)]
    for g, a, b in zip(whole, *shards, strict=True):
        assert g.n_tokens == a.n_tokens == b.n_tokens and g.n_values == a.n_values == b.n_values
        rows_a = sum(len(m.tokens) for m in a.micro_batches)
        rows_b = sum(len(m.tokens) for m in b.micro_batches)
        assert rows_a + rows_b == g.n_rows and all(len(m.tokens) <= 4 for m in a.micro_batches)
        # the targets of both ranks together are the targets of the whole batch
        n_targets = sum(int((m.target_tokens != 0).sum()) for m in a.micro_batches + b.micro_batches)
        assert n_targets == g.n_tokens
    # resuming at batch 5 gives exactly the rest of the epoch
    tail = list(ds.iter_batches(plan, start=5))
    assert [t.index for t in tail] == list(range(5, len(plan)))
    for t, g in zip(tail, whole[5:], strict=True):
        assert all(bool((x.tokens == y.tokens).all()) for x, y in zip(t.micro_batches, g.micro_batches, strict=True))


def test_collate_prepends_bos_and_shifts_targets():
    batch = collate([(np.array([6, 3, 2]), np.array([np.nan, 0.5, np.nan])), (np.array([7, 2]), np.array([np.nan] * 2))])
    assert batch.tokens.tolist() == [[1, 6, 3], [1, 7, 2]]
    assert batch.target_tokens.tolist() == [[6, 3, 2], [7, 2, 0]]
    assert batch.values[0, 2].item() == 0.5 and batch.target_values[0, 1].item() == 0.5


def test_rows_longer_than_max_len_are_skipped(store):
    path, _ = store
    ds = TokenStoreDataset(path, "train", max_len=20)
    assert len(ds) > 0 and int(ds.lengths.max()) <= 20


def test_missing_foreign_and_unfinished_stores_are_refused(tmp_path, store):
    with pytest.raises(StoreError, match="does not exist"):
        TokenStore(tmp_path / "none.zarr")
    foreign = zarr.open_group(str(tmp_path / "foreign.zarr"), mode="w")
    foreign.attrs["schema"] = "something/else"
    with pytest.raises(StoreError, match="schema"):
        TokenStore(tmp_path / "foreign.zarr")
    half = write_store(tmp_path / "half.zarr", random_sequences(5))
    zarr.open_group(str(half), mode="r+").attrs["consolidated"] = None
    with pytest.raises(StoreError, match="incomplete"):
        TokenStore(half)
