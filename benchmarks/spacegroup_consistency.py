"""Space-group consistency of a trained checkpoint, with and without the grammar's canonical site
blocks (``Grammar(canonical_sites=...)``), and why the inconsistent structures are inconsistent.

For each temperature, ``--per-temp`` sequences are sampled (same seed in both runs, no sampler
guards) and checked like the generate stage does (``generate.checks.check_sequence``: spglib at
symprec 0.01 finds the sampled group). Every inconsistent structure is classified:

- ``site_block``: its sites (Wyckoff positions and which of them share an element) are invariant
  under a larger group whatever the free values and lattice lengths (``site_block_group``): the
  sequence is not the encoding of any crystal;
- ``values``: the site block alone has the sampled group, so the free values or the lattice
  made the higher symmetry (or spglib found none).

One JSON line: consistency per temperature and averaged over T <= 1.0 with the rule (``new``)
and the same run without it (``baseline``), the causes and the groups found (sampled -> found).
Usage: python benchmarks/spacegroup_consistency.py --checkpoint runs/demo/train
           [--temps 0.7,0.8,0.9,1.0] [--per-temp 64] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections import Counter

import numpy as np
import torch

from matra_hpc.generate.checks import check_sequence
from matra_hpc.model.checkpoint import load_model
from matra_hpc.sample.sampler import SamplerSettings, sample_sequences
from matra_hpc.tokens.grammar import Grammar, site_block_group
from matra_hpc.util import git_revision


def site_block(grammar: Grammar, tokens: list[int], values: list[float]) -> tuple[int, list[tuple[int, int]]]:
    """The group and (position, element index) sites of a sampled sequence, read by the grammar."""
    state = grammar.new_states(1)[0]
    for token, value in zip(tokens, values, strict=True):
        grammar.advance(state, token, value)
    return state.group, list(state.sites)


def measure(model, temperatures: list[float], per_temp: int, seed: int, canonical: bool) -> dict:
    grammar = Grammar(canonical_sites=canonical)
    plain = Grammar(canonical_sites=False)
    rows, causes, found = {}, Counter(), Counter()
    started, sampling = time.perf_counter(), 0.0
    for i, temperature in enumerate(temperatures):
        t0 = time.perf_counter()
        seqs = sample_sequences(model, grammar, per_temp, temperature, torch.Generator().manual_seed(seed + i),
                                SamplerSettings(batch_size=min(per_temp, 64)))
        sampling += time.perf_counter() - t0
        ok = 0
        for seq in seqs:
            check = check_sequence(seq.tokens, seq.values, seq.complete, with_cif=False)
            ok += check.spacegroup_ok
            if check.decodes and not check.spacegroup_ok:
                group, sites = site_block(plain, seq.tokens, seq.values)
                block = site_block_group(group, sites)
                causes["site_block" if block != group else "values"] += 1
                found[f"{group}->{check.found_spacegroup}"] += 1
        rows[f"{temperature:.2f}"] = round(ok / per_temp, 4)
    low = [v for t, v in rows.items() if float(t) <= 1.0 + 1e-9]
    return {"consistent": rows, "mean_t_le_1": round(float(np.mean(low)), 4) if low else None,
            "causes": dict(causes), "found": dict(found.most_common(12)),
            "seconds": round(time.perf_counter() - started, 1), "sampling_seconds": round(sampling, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--temps", default="0.7,0.8,0.9,1.0")
    parser.add_argument("--per-temp", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, _ = load_model(args.checkpoint)
    model.eval()
    temperatures = [float(t) for t in args.temps.split(",")]
    # untimed: imports, symmetry tables and spglib's first calls, which would favour the second run
    measure(model, [1.0], 8, args.seed + 1000, canonical=True)
    new = measure(model, temperatures, args.per_temp, args.seed, canonical=True)
    baseline = measure(model, temperatures, args.per_temp, args.seed, canonical=False)
    print(json.dumps({
        "benchmark": "spacegroup_consistency", "checkpoint": args.checkpoint, "per_temp": args.per_temp,
        "seed": args.seed, "machine": platform.machine(), "git": git_revision(),
        "new": new, "baseline": baseline,
    }), flush=True)


if __name__ == "__main__":
    main()
