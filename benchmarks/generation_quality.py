"""Generation quality of trained checkpoints, measured the way docs/generation-quality.md reports it.

For each checkpoint (``NAME=PATH``, e.g. the tiny model and the tiny model with the paper's head,
trained on the same token store):

- teacher forced, per kind of value (coordinate, length, angle) and split: the mean absolute
  error of the model's point value against the per-kind mean predictor's (the constant with the
  smallest error on the training split), and per lattice slot (a, b, c, alpha, beta, gamma);
- sampled at each temperature (``--per-temp`` sequences, seed 0, no guards): bond-valid (no pair
  under 0.7 A), volume per atom, shortest distance, lattice lengths at the grammar's 1 A clamp,
  and whether the closest pair of a bond-invalid structure belongs to one orbit or to two sites.

Writes ``quality-errors.png``, ``quality-lengths.png``, ``quality-sampling.png`` under ``--out``
and prints one JSON line (the figures; the "baseline" is the first checkpoint, same run).
Usage: python benchmarks/generation_quality.py --store tokens.zarr \\
           --checkpoints tiny-paper=runs/a/train,tiny=runs/b/train --out docs/img
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from matra_hpc.data.dataset import TokenStore, TokenStoreDataset
from matra_hpc.generate.checks import check_sequence
from matra_hpc.model.checkpoint import load_model
from matra_hpc.model.slots import ANGLE, COORD, KIND_NAMES, LENGTH, sequence_slot_kinds, value_abs_errors
from matra_hpc.model.transformer import point_values, target_cell_atoms, target_slot_kinds
from matra_hpc.sample.sampler import SamplerSettings, sample_sequences
from matra_hpc.tokens import load_vocab
from matra_hpc.tokens.grammar import Grammar

KINDS = (COORD, LENGTH, ANGLE)
LATTICE_SLOTS = ("a", "b", "c", "alpha", "beta", "gamma")


def kind_constants(store: TokenStore) -> dict[int, float]:
    """The per-kind mean predictor of the training split (periodic median for coordinates)."""
    values = defaultdict(list)
    for row in store.rows("train"):
        tok, val = store.read_row(int(row))
        kinds = sequence_slot_kinds(tok)
        for k in KINDS:
            values[k].append(val[kinds == k])
    out = {}
    for k in KINDS:
        v = np.concatenate(values[k])
        if k == COORD:
            grid = np.linspace(0, 1, 201)[:-1]
            d = np.abs(v[None, :] - grid[:, None]) % 1.0
            out[k] = float(grid[np.argmin(np.minimum(d, 1 - d).mean(axis=1))])
        else:
            out[k] = float(np.median(v))
    return out


@torch.no_grad()
def teacher_forced(model, store: TokenStore, split: str, constants: dict[int, float]) -> dict:
    ds = TokenStoreDataset(store, split, model.config.max_len)
    err = defaultdict(list)
    base = defaultdict(list)
    slot_err = defaultdict(list)
    vocab = load_vocab()
    for shard in ds.iter_eval_batches(512):
        for mb in shard.micro_batches:
            kinds, atoms = target_slot_kinds(mb.target_tokens), target_cell_atoms(mb.target_tokens)
            _, cont = model(mb.tokens, mb.values, kinds=kinds)
            pred = point_values(model, cont, kinds, atoms)
            e = value_abs_errors(pred, mb.target_values, kinds)
            constant = torch.tensor([0.0, *(constants[k] for k in KINDS)])[kinds]
            b = value_abs_errors(constant, mb.target_values, kinds)
            for k in KINDS:
                err[k].append(e[k])
                base[k].append(b[k])
            # per lattice slot: the values after the last site, in the crystal system's order
            tt, kk = mb.target_tokens.numpy(), kinds.numpy()
            pe = np.abs(pred.numpy() - mb.target_values.numpy())
            for r in range(len(tt)):
                lattice = np.flatnonzero((kk[r] == LENGTH) | (kk[r] == ANGLE))
                group = vocab.spacegroup_of(int(next(t for t in tt[r] if vocab.kind(int(t)) == "spacegroup")))
                from matra_hpc.tokens.wyckoff import lattice_parameter_names

                for name, pos in zip(lattice_parameter_names(group), lattice, strict=False):
                    slot_err[name].append(pe[r, pos])
    out = {}
    for k in KINDS:
        e, b = np.concatenate(err[k]), np.concatenate(base[k])
        out[KIND_NAMES[k]] = {"n": int(len(e)), "mae": float(e.mean()), "mean_predictor_mae": float(b.mean()),
                              "ratio": float(e.mean() / b.mean())}
    out["lattice_slots"] = {name: float(np.mean(v)) for name, v in slot_err.items()}
    return out


def sampled(model, temperature: float, n: int) -> dict:
    grammar = Grammar()
    started = time.perf_counter()
    seqs = sample_sequences(model, grammar, n, temperature, torch.Generator().manual_seed(0),
                            SamplerSettings(batch_size=64))
    seconds = time.perf_counter() - started
    vocab = load_vocab()
    bonds = spg = 0
    vpa, shortest, lengths, clamp, same_orbit, cross_orbit = [], [], [], 0, 0, 0
    for s in seqs:
        check = check_sequence(s.tokens, s.values, s.complete, with_cif=False)
        if not check.decodes:
            continue
        st = check.structure
        bonds += check.bonds_ok
        spg += check.spacegroup_ok
        vpa.append(st.volume / len(st))
        kinds = sequence_slot_kinds(np.asarray(s.tokens))
        ls = np.asarray(s.values)[kinds == LENGTH]
        lengths += ls.tolist()
        clamp += int(np.any(ls <= 1.0 + 1e-9))
        _, _, _, d = st.get_neighbor_list(r=8.0)
        if len(d):
            shortest.append(float(d.min()))
        if not check.bonds_ok:
            group = check.sampled_spacegroup
            mults = [vocab.wyckoff_of(group, t).multiplicity for t in s.tokens if vocab.kind(t) == "wyckoff"]
            orbit = np.repeat(np.arange(len(mults)), mults)
            c, nb, _, dist = st.get_neighbor_list(r=0.7)
            i = int(np.argmin(dist))
            if len(orbit) == len(st) and orbit[c[i]] == orbit[nb[i]]:
                same_orbit += 1
            else:
                cross_orbit += 1
    return {"T": temperature, "n": n, "bond_valid": bonds / n, "spacegroup_consistent": spg / n,
            "vpa_median": float(np.median(vpa)), "shortest_median": float(np.median(shortest)),
            "lengths_at_clamp": clamp / n, "closest_pair_same_orbit": same_orbit,
            "closest_pair_two_sites": cross_orbit, "sample_seconds": round(seconds, 2),
            "_lengths": lengths, "_vpa": vpa}


def train_stats(store: TokenStore) -> dict:
    lengths = []
    for row in store.rows("train"):
        tok, val = store.read_row(int(row))
        lengths += val[sequence_slot_kinds(tok) == LENGTH].tolist()
    lattice = np.asarray(store.group["lattice"][:])
    n_sites = np.asarray(store.group["n_sites_conventional"][:])
    vpa = np.abs(np.linalg.det(lattice)) / np.maximum(n_sites, 1)
    return {"lengths": lengths, "vpa": vpa[~store.is_val].tolist()}


def plots(results: dict, train: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    for ax, split in zip(axes, ("val", "train"), strict=True):
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            ratios = [results[name][split][KIND_NAMES[k]]["ratio"] for k in KINDS]
            ax.bar(np.arange(3) + i * width, ratios, width, label=name)
        ax.set_xticks(np.arange(3) + 0.4 - width / 2, [KIND_NAMES[k] for k in KINDS])
        ax.axhline(1.0, color="k", lw=0.8)
        ax.axhline(0.5, color="k", lw=0.8, ls="--")
        ax.set_ylabel("MAE / mean predictor's MAE")
        ax.set_title(f"teacher-forced value errors, {split} split", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "quality-errors.png")
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    bins = np.logspace(np.log10(0.9), np.log10(60), 60)
    axes[0].hist(np.clip(train["lengths"], 0.9, 60), bins=bins, density=True, alpha=0.5, label="training store")
    bins_v = np.logspace(np.log10(0.3), np.log10(100), 60)
    axes[1].hist(np.clip(train["vpa"], 0.3, 100), bins=bins_v, density=True, alpha=0.5, label="training store")
    for name in names:
        rows = [r for r in results[name]["sampling"] if r["T"] == 1.0] or results[name]["sampling"]
        axes[0].hist(np.clip(rows[0]["_lengths"], 0.9, 60), bins=bins, density=True, histtype="step", lw=1.5,
                     label=f"{name}, T={rows[0]['T']}")
        axes[1].hist(np.clip(rows[0]["_vpa"], 0.3, 100), bins=bins_v, density=True, histtype="step", lw=1.5,
                     label=f"{name}, T={rows[0]['T']}")
    for ax, label in zip(axes, ("sampled lattice lengths a, b, c (A)", "volume per atom (A^3)"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "quality-lengths.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=110)
    for name in names:
        rows = results[name]["sampling"]
        ax.plot([r["T"] for r in rows], [100 * r["bond_valid"] for r in rows], "s-", label=f"{name} bond-valid")
        ax.plot([r["T"] for r in rows], [100 * r["spacegroup_consistent"] for r in rows], "^--",
                label=f"{name} space group consistent")
    ax.set_xlabel("temperature T")
    ax.set_ylabel("% of sampled")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "quality-sampling.png")
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True)
    parser.add_argument("--checkpoints", required=True, help="NAME=PATH,... (the first is the baseline)")
    parser.add_argument("--temps", default="0.8,1.0,1.2")
    parser.add_argument("--per-temp", type=int, default=128)
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    torch.set_num_threads(1)
    store = TokenStore(args.store)
    constants = kind_constants(store)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for item in args.checkpoints.split(","):
        name, path = item.split("=", 1)
        model, meta = load_model(path)
        results[name] = {"step": meta.get("step"), "model": meta["model_config"].get("value_head"),
                         "val": teacher_forced(model, store, "val", constants),
                         "train": teacher_forced(model, store, "train", constants),
                         "sampling": [sampled(model, float(t), args.per_temp) for t in args.temps.split(",")]}
    plots(results, train_stats(store), out)
    for r in results.values():
        for row in r["sampling"]:
            row.pop("_lengths")
            row.pop("_vpa")
    first = next(iter(results))
    print(json.dumps({"benchmark": "generation_quality", "baseline": first, "results": results}))


if __name__ == "__main__":
    main()
