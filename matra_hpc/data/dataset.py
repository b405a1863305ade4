"""The reading side of the token store, for training (docs/contracts.md section C).

The store is never loaded whole: only ``offsets`` (8 bytes a row) and the split column (as one
byte a row) stay in memory; tokens and values are read on demand. Training reads them a
*window* at a time: a run of consecutive rows in storage order, one contiguous slice of the flat
arrays (a few zarr chunks), shuffled and length-bucketed inside the window.

An epoch's plan of global batches is a pure function of (row lengths, global batch, seed,
epoch): every rank computes the same plan, and a run resumed at batch ``b`` of epoch ``e`` sees
the same batches as one that never stopped. Rank ``r`` of ``W`` takes rows ``r::W`` of each
length-sorted global batch, so the ranks' rows are disjoint and of similar length.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from matra_hpc.errors import StoreError

log = logging.getLogger(__name__)

SPLITS = ("train", "val")

# Ids pinned by docs/contracts.md section A.
PAD_ID = 0
BOS_ID = 1
NUM_ID = 3


class TokenStore:
    """A read-only view of a consolidated token store."""

    def __init__(self, path: str | Path) -> None:
        from matra_hpc.data.store import open_token_store

        self.path = Path(path)
        # Refuses missing, foreign, unconsolidated and truncated stores with the way out.
        self.group = open_token_store(self.path)
        self.attrs: dict[str, Any] = dict(self.group.attrs)
        if "vocab_hash" not in self.attrs:
            raise StoreError(f"token store {self.path} has no vocab_hash attribute")
        self.tokens = self.group["tokens"]
        self.values = self.group["values"]
        self.offsets = np.asarray(self.group["offsets"][:], dtype=np.int64)
        n_rows = len(self.offsets) - 1
        split = np.asarray(self.group["split"][:])
        if n_rows < 0 or len(split) != n_rows or self.tokens.shape[0] != self.offsets[-1]:
            raise StoreError(f"token store {self.path} is inconsistent (offsets, split and tokens disagree)")
        self.is_val = split == "val"
        unknown = ~(self.is_val | (split == "train"))
        if unknown.any():
            raise StoreError(f"token store {self.path} has split values other than train/val")
        self.lengths = np.diff(self.offsets)

    @property
    def n_rows(self) -> int:
        return len(self.lengths)

    @property
    def vocab_hash(self) -> str:
        return str(self.attrs["vocab_hash"])

    @property
    def vocab_size(self) -> int:
        """Size of the store's vocabulary (from its ``vocab`` attr, else the project's)."""
        vocab = self.attrs.get("vocab")
        if isinstance(vocab, dict) and "size" in vocab:
            return int(vocab["size"])
        if isinstance(vocab, dict) and isinstance(vocab.get("tokens"), list):
            return len(vocab["tokens"])
        from matra_hpc.tokens import load_vocab

        project = load_vocab()
        if project.hash != self.vocab_hash:
            raise StoreError(f"token store {self.path} has no readable vocab and its vocab_hash is not this version's")
        return project.size

    def rows(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
        return np.flatnonzero(self.is_val if split == "val" else ~self.is_val)

    def read_span(self, first_row: int, stop_row: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Tokens and values of rows ``first_row..stop_row-1`` as one contiguous read.

        Returns the flat arrays and the flat index of ``first_row``'s first token.
        """
        lo, hi = int(self.offsets[first_row]), int(self.offsets[stop_row])
        return np.asarray(self.tokens[lo:hi]), np.asarray(self.values[lo:hi]), lo

    def read_row(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        tokens, values, _ = self.read_span(row, row + 1)
        return tokens, values

    def content_hash(self) -> str:
        """The content hash recorded when the store was consolidated."""
        recorded = self.attrs.get("content_hash")
        if not recorded:
            raise StoreError(f"token store {self.path} records no content_hash (consolidate it again)")
        return str(recorded)


@dataclass
class Batch:
    """One padded micro-batch: model input and its targets (the input shifted left by one)."""

    tokens: torch.Tensor  # (B, T) int64: <bos> + sequence[:-1]
    values: torch.Tensor  # (B, T) float32, NaN where the token is not <num>
    target_tokens: torch.Tensor  # (B, T) int64, PAD after the end of each row
    target_values: torch.Tensor  # (B, T) float32

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(t.to(device, non_blocking=True) for t in (self.tokens, self.values, self.target_tokens, self.target_values)))


@dataclass(frozen=True)
class PlannedBatch:
    positions: np.ndarray  # positions in TokenStoreDataset.rows
    window_lo: int  # the window of positions it was drawn from, read in one go
    window_hi: int


@dataclass
class GlobalBatchShard:
    """This rank's share of one global batch, with the global counts its loss is divided by."""

    index: int  # batch number inside the epoch
    micro_batches: list[Batch]
    n_rows: int  # rows of the whole global batch
    n_tokens: int  # targets of the whole global batch (every rank knows them: same plan)
    n_values: int  # <num> targets of the whole global batch


def collate(seqs: list[tuple[np.ndarray, np.ndarray]]) -> Batch:
    """Pad sequences (tokens, values) into one batch with ``<bos>`` prepended to the input."""
    T = max(len(t) for t, _ in seqs)
    B = len(seqs)
    full_tok = np.full((B, T + 1), PAD_ID, dtype=np.int64)
    full_val = np.full((B, T + 1), np.nan, dtype=np.float32)
    full_tok[:, 0] = BOS_ID
    for i, (tok, val) in enumerate(seqs):
        full_tok[i, 1 : len(tok) + 1] = tok
        full_val[i, 1 : len(val) + 1] = val
    tok_t = torch.from_numpy(full_tok)
    val_t = torch.from_numpy(full_val)
    return Batch(tok_t[:, :-1], val_t[:, :-1], tok_t[:, 1:], val_t[:, 1:])


class TokenStoreDataset(Dataset):
    """Rows of one split of a token store, read on demand.

    ``dataset[i]`` is ``(tokens, values)`` of the i-th row of the split (random access, one row
    read). Training uses :meth:`epoch_plan` and :meth:`iter_batches`, which read a window of
    consecutive rows at a time.
    """

    def __init__(
        self,
        store: TokenStore | str | Path,
        split: str = "train",
        max_len: int | None = None,
        window_batches: int = 64,
    ) -> None:
        self.store = store if isinstance(store, TokenStore) else TokenStore(store)
        self.split = split
        rows = self.store.rows(split)
        lengths = self.store.lengths[rows]
        if max_len is not None:
            # The model input is <bos> + tokens[:-1]: a row of n tokens needs n positions.
            too_long = lengths > max_len
            if too_long.any():
                log.warning(
                    "%d %s rows of %s are longer than max_len=%d tokens and are skipped",
                    int(too_long.sum()), split, self.store.path, max_len,
                )
                rows, lengths = rows[~too_long], lengths[~too_long]
        empty = lengths == 0
        if empty.any():
            rows, lengths = rows[~empty], lengths[~empty]
        self.rows = rows
        self.lengths = lengths
        self.window_batches = window_batches

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, values = self.store.read_row(int(self.rows[index]))
        return torch.from_numpy(tokens.astype(np.int64)), torch.from_numpy(values.astype(np.float32))

    def n_batches(self, global_batch: int) -> int:
        return -(-len(self.rows) // global_batch)

    def epoch_plan(self, global_batch: int, seed: int, epoch: int) -> list[PlannedBatch]:
        """The epoch's global batches (positions in ``self.rows``) with the window each came from.

        Windows of ``window_batches * global_batch`` consecutive rows are visited in a shuffled
        order; inside a window rows are shuffled, then sorted by length (ties stay shuffled) and
        cut into batches, whose order is shuffled too. Padding stays small and each window is
        one contiguous read.
        """
        rng = np.random.default_rng([seed, epoch])
        window = self.window_batches * global_batch
        n = len(self.rows)
        plan: list[PlannedBatch] = []
        for start in rng.permutation(np.arange(0, n, window)):
            stop = min(int(start) + window, n)
            idx = np.arange(start, stop)
            idx = idx[rng.permutation(len(idx))]
            idx = idx[np.argsort(self.lengths[idx], kind="stable")]
            batches = [idx[i : i + global_batch] for i in range(0, len(idx), global_batch)]
            plan.extend(PlannedBatch(batches[j], int(start), stop) for j in rng.permutation(len(batches)))
        return plan

    def iter_batches(
        self,
        plan: list[PlannedBatch],
        start: int = 0,
        rank: int = 0,
        world_size: int = 1,
        micro_batch: int | None = None,
    ) -> Iterator[GlobalBatchShard]:
        """This rank's shards of ``plan[start:]``, reading one window of rows at a time."""
        span: tuple[int, int] | None = None
        flat_tok = flat_val = np.empty(0)
        base = 0
        for index in range(start, len(plan)):
            planned = plan[index]
            if span != (planned.window_lo, planned.window_hi):
                span = (planned.window_lo, planned.window_hi)
                first_row, stop_row = int(self.rows[span[0]]), int(self.rows[span[1] - 1]) + 1
                flat_tok, flat_val, base = self.store.read_span(first_row, stop_row)
            seqs = [self._slice_row(int(p), flat_tok, flat_val, base) for p in planned.positions]
            yield self._shard(index, seqs, rank, world_size, micro_batch)

    def _slice_row(self, pos: int, flat_tok: np.ndarray, flat_val: np.ndarray, base: int) -> tuple[np.ndarray, np.ndarray]:
        row = int(self.rows[pos])
        lo = int(self.store.offsets[row]) - base
        hi = int(self.store.offsets[row + 1]) - base
        return flat_tok[lo:hi], flat_val[lo:hi]

    @staticmethod
    def _shard(
        index: int, seqs: list[tuple[np.ndarray, np.ndarray]], rank: int, world_size: int, micro_batch: int | None
    ) -> GlobalBatchShard:
        n_tokens = int(sum(len(t) for t, _ in seqs))
        n_values = int(sum(int((t == NUM_ID).sum()) for t, _ in seqs))
        mine = seqs[rank::world_size]
        size = micro_batch or max(len(mine), 1)
        micro = [collate(mine[i : i + size]) for i in range(0, len(mine), size)]
        return GlobalBatchShard(index, micro, len(seqs), n_tokens, n_values)

    def iter_eval_batches(self, batch_size: int, rank: int = 0, world_size: int = 1) -> Iterator[GlobalBatchShard]:
        """Every row once, in storage order; whole batches dealt round-robin over the ranks."""
        n = len(self.rows)
        for index, lo in enumerate(range(0, n, batch_size)):
            if index % world_size != rank:
                continue
            hi = min(lo + batch_size, n)
            flat_tok, flat_val, base = self.store.read_span(int(self.rows[lo]), int(self.rows[hi - 1]) + 1)
            seqs = [self._slice_row(pos, flat_tok, flat_val, base) for pos in range(lo, hi)]
            yield self._shard(index, seqs, 0, 1, None)


def describe_store(store: TokenStore) -> dict[str, Any]:
    """What a checkpoint records about the data it was trained on."""
    return {
        "path": str(store.path.resolve()),
        "content_hash": store.content_hash(),
        "vocab_hash": store.vocab_hash,
        "n_rows": store.n_rows,
        "split_counts": {"train": int((~store.is_val).sum()), "val": int(store.is_val.sum())},
        "schema": store.attrs.get("schema"),
        "created_by": json.loads(json.dumps(store.attrs.get("created_by"), default=str)),
    }
