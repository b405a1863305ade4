"""Small token stores for the training tests, written exactly as docs/contracts.md section C says.

Sequences follow the grammar of section A (properties, composition, group, sites, lattice,
END) with random choices, so lengths and the share of ``<num>`` tokens look like real data.
``real_sequences`` encodes real structures of the demo set when the tokens stage is present.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import zarr

from matra_hpc.tokens import load_vocab
from matra_hpc.tokens.format import TOKEN_FORMAT


def random_sequences(n: int, seed: int = 0) -> list[tuple[list[int], list[float]]]:
    vocab = load_vocab()
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        tok: list[int] = []
        val: list[float] = []

        def add(t: int, v: float = float("nan"), tok: list[int] = tok, val: list[float] = val) -> None:
            tok.append(int(t))
            val.append(v)

        if rng.random() < 0.8:
            add(vocab.ehull_low if rng.random() < 0.5 else vocab.ehull_high)
        k = int(rng.integers(1, 4))
        add(vocab.arity(k))
        for z in sorted(rng.choice(np.arange(1, 84), size=k, replace=False)):
            add(vocab.element(int(z)))
            add(vocab.count(int(rng.integers(1, 9))))
        add(vocab.spacegroup(int(rng.integers(2, 231))))
        for _ in range(int(rng.integers(1, 5))):
            add(rng.integers(*vocab.wyckoff_range))
            add(vocab.element(int(rng.integers(1, 84))))
            for _ in range(int(rng.integers(0, 4))):
                add(vocab.num, float(rng.random()))
        n_lat = int(rng.choice([1, 2, 3, 4, 6]))
        for i in range(n_lat):
            add(vocab.num, float(rng.uniform(3, 12) if i < 3 else rng.uniform(60, 120)))
        add(vocab.end)
        out.append((tok, val))
    return out


def write_store(path: Path, seqs: list[tuple[list[int], list[float]]], val_every: int = 10,
                vocab_hash: str | None = None) -> Path:
    """A consolidated token store holding ``seqs``; every ``val_every``-th row is in val."""
    vocab = load_vocab()
    n = len(seqs)
    tokens = np.concatenate([np.asarray(t, dtype=np.int32) for t, _ in seqs])
    values = np.concatenate([np.asarray(v, dtype=np.float64) for _, v in seqs])
    offsets = np.concatenate([[0], np.cumsum([len(t) for t, _ in seqs])]).astype(np.int64)
    split = np.array(["val" if val_every and i % val_every == val_every - 1 else "train" for i in range(n)],
                     dtype=object)
    root = zarr.open_group(str(path), mode="w")

    def arr(name: str, data: np.ndarray, dtype, chunk: int = 64) -> None:
        a = root.create_array(name, shape=data.shape, dtype=dtype,
                              chunks=(max(1, min(chunk, len(data))), *data.shape[1:]))
        if len(data):
            a[...] = data

    arr("tokens", tokens, "int32", 256)
    arr("values", values, "float64", 256)
    arr("offsets", offsets, "int64")
    for name, col in (("id", [f"test:{i}" for i in range(n)]), ("source", ["test"] * n), ("split", split),
                      ("formula", ["X"] * n), ("prototype_hash", [f"v1:{i}" for i in range(n)])):
        arr(name, np.array(col, dtype=object), str)
    arr("spacegroup", np.full(n, 2, dtype=np.int16), "int16")
    arr("e_above_hull", np.zeros(n), "float64")
    arr("e_form", np.full(n, np.nan), "float64")
    arr("lattice", np.tile(np.eye(3) * 4.0, (n, 1, 1)), "float64")
    arr("frac_coords", np.zeros((n, 3)), "float64")
    arr("numbers", np.ones(n, dtype=np.int16), "int16")
    arr("site_offsets", np.arange(n + 1, dtype=np.int64), "int64")
    arr("n_sites_conventional", np.ones(n, dtype=np.int32), "int32")
    arr("n_sites_primitive", np.ones(n, dtype=np.int32), "int32")
    content = hashlib.sha256(tokens.tobytes() + values.tobytes() + offsets.tobytes()).hexdigest()
    root.attrs.update({
        "schema": "matra-hpc/tokens/1",
        "created_by": {"package": "tests", "git": None},
        "config": {},
        "vocab": json.loads(json.dumps(vocab.to_json())),
        "vocab_hash": vocab_hash or vocab.hash,
        "token_format": TOKEN_FORMAT,
        "sources": [],
        "energy": {},
        "n_rows": n,
        "split_counts": {"train": int((split == "train").sum()), "val": int((split == "val").sum())},
        "content_hash": "sha256:" + content,
        "consolidated": True,
    })
    return path
