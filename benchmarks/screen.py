"""Screening: relaxations/s batched (torch-sim, in-flight) vs the per-structure ASE loop, and the
Spearman correlation of the ML e-hull with the DFT e-hull of the demo data.

Part 1, throughput: the same N demo-sized structures (primitive cells of the demo token store
with at most ``--max-sites`` atoms, volume +6% and positions rattled by 0.05 A so that each needs
relaxing) relaxed with the same protocol twice in one run: batched (``relax_structures`` with a
torch-sim model, the stage's path) and one at a time with ASE's FIRE (the baseline). Both report
relaxations/s; their energies are compared structure by structure.

Part 2, accuracy: ``--n-hull`` structures of the demo store, drawn from its most populated
chemical systems (so the hull references stay few), relaxed like candidates and placed on an ML
hull of the store's DFT-stable references relaxed the same way (MP2020 on both); Spearman's rho
against the store's DFT ``e_above_hull``. The references come from the same store: a structure
that is itself a reference is scored against itself like any other.

The novelty-index figures (10^6 and 10^7 keys) are ``benchmarks/index.py``.

Measured (2026-12-02, 2-core AMD EPYC VM shared with three other sessions, load 3-6, CPU, 7net-0,
demo token store of the demo run, 64 cells of 6.9 atoms on average, ``sevennet:0.05``, cap 100):

- one torch thread (``OMP_NUM_THREADS=1``): batched 0.217 relaxations/s (149 CPU-s, 101 model
  calls for 1,878 system-steps) vs ASE 0.163/s (197 CPU-s, 1,822 steps): **1.33x** wall, 1.32x
  per CPU-second; all 64 converged both ways, energies agree to 2.4e-4 eV/atom on average
  (largest single difference 0.015; not investigated). The issue's 2x on CPU is not
  reached. Why: 7net-0's forward and backward (e3nn tensor products) are >= 90% of the batched
  run (cProfile) and cost ~7.4 ms per atom in a batch of 100-450 atoms vs ~10 ms per atom one
  cell at a time; batching removes the per-call Python and dispatch overhead, not FLOPs. A
  fix that mattered: large batches page-faulted their whole working set on every call (glibc
  maps blocks > 32 MB afresh; 0.8 million faults and up to as much system time as compute per
  call at 442 atoms), now kept in the heap (``relax.retain_freed_memory``). Torch-sim's own
  per-system FIRE/cell-filter work is ~3%; neighbour lists and graph collation < 1%.
- two torch threads (``OMP_NUM_THREADS=2``), same command: stopped unfinished after 55 min wall
  and 44 CPU-min (the one-thread run: 12 min, ~6 CPU-min). On this shared machine (load ~5 on
  2 cores) OpenMP threads spin waiting for each other: a single batched call at 2 threads cost
  3-10x the CPU per atom of 1 thread. Threads only pay on idle cores.
- e-hull (``--skip-throughput``, one thread): 200 structures of the 70 most populated chemical
  systems, 216 references relaxed (318 s), 185 scored (15 got ``no_reference``): Spearman
  **0.625** against the store's DFT e-hull, MAE 0.047 eV/atom, every DFT-stable one below
  0.05 eV/atom on the ML hull (stable recall 1.0); 880 s in all.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/screen.py [--tokens demo-out/tokens.zarr]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _structures(tokens: str, max_sites: int, max_ehull: float | None = None):
    """(id, primitive structure, DFT e_above_hull) of the token store, small cells only."""
    from pymatgen.core import Lattice, Structure

    from matra_hpc.data.store import open_token_store

    root = open_token_store(tokens)
    ids, ehull = root["id"][...], np.asarray(root["e_above_hull"][...], float)
    lattice, frac = np.asarray(root["lattice"][...]), np.asarray(root["frac_coords"][...])
    numbers, offsets = np.asarray(root["numbers"][...]), np.asarray(root["site_offsets"][...])
    out = []
    for r in range(len(ids)):
        a, b = offsets[r], offsets[r + 1]
        s = Structure(Lattice(lattice[r]), numbers[a:b].astype(int), frac[a:b])
        if len(s) > 4 * max_sites:
            continue
        p = s.get_primitive_structure()
        if len(p) <= max_sites and (max_ehull is None or ehull[r] <= max_ehull):
            out.append((str(ids[r]), p, float(ehull[r])))
    return out


def _perturbed(structure, seed: int):
    from pymatgen.core import Structure

    rng = np.random.default_rng(seed)
    s = structure.copy()
    s.scale_lattice(s.volume * 1.06)
    cart = s.cart_coords + rng.normal(0, 0.05, (len(s), 3))
    return Structure(s.lattice, s.species, cart, coords_are_cartesian=True, to_unit_cell=True)


def throughput(pool, args, get_potential) -> dict:
    import torch

    from matra_hpc.screen.relax import BatchStats, parse_protocol, relax_structures

    rng = np.random.default_rng(0)
    picks = rng.choice(len(pool), size=min(args.n_relax, len(pool)), replace=False)
    structures = [_perturbed(pool[i][1], int(i)) for i in picks]
    protocol = parse_protocol(args.relax, args.max_steps)
    get_potential(protocol[0].potential).batched()  # load outside the clocks
    get_potential(protocol[0].potential).calculator()
    stats = BatchStats()
    # CPU seconds beside wall seconds: on a shared machine the CPU-time ratio is the one that
    # load does not bias (with one thread; with more, wall time is what parallelism buys)
    t0, c0 = time.perf_counter(), time.process_time()
    batched = relax_structures([s.copy() for s in structures], protocol, get_potential,
                               max_atoms_in_batch=args.batch_atoms, stats=stats)
    t_batched, c_batched = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    serial = relax_structures([s.copy() for s in structures], protocol, get_potential, batched=False)
    t_serial, c_serial = time.perf_counter() - t0, time.process_time() - c0
    both = [(b.energy_per_atom, a.energy_per_atom) for b, a in zip(batched, serial, strict=True)
            if np.isfinite(b.energy_per_atom) and np.isfinite(a.energy_per_atom)]
    diff = np.abs(np.subtract(*zip(*both, strict=True))) if both else np.zeros(0)
    return {
        "n": len(structures), "atoms_mean": round(float(np.mean([len(s) for s in structures])), 2),
        "protocol": args.relax, "max_steps": args.max_steps, "batch_atoms": args.batch_atoms,
        "torch_threads": torch.get_num_threads(),
        "batched": {"seconds": round(t_batched, 2), "relaxations_per_s": round(len(structures) / t_batched, 3),
                    "cpu_seconds": round(c_batched, 2),
                    "model_calls": stats.model_calls, "fire_steps": stats.fire_steps,
                    "system_steps": stats.system_steps, "max_systems": stats.max_systems,
                    "converged": sum(r.converged for r in batched)},
        "ase_baseline": {"seconds": round(t_serial, 2), "relaxations_per_s": round(len(structures) / t_serial, 3),
                         "cpu_seconds": round(c_serial, 2),
                         "system_steps": int(sum(r.n_steps for r in serial)),
                         "converged": sum(r.converged for r in serial)},
        "speedup": round(t_serial / t_batched, 2),
        "speedup_cpu_seconds": round(c_serial / c_batched, 2),
        "energy_abs_diff_eV_per_atom": {"mean": float(diff.mean()) if len(diff) else None,
                                        "max": float(diff.max()) if len(diff) else None},
    }


def accuracy(pool, args, get_potential) -> dict:
    from scipy.stats import spearmanr

    from matra_hpc.screen.hull import HullCalculator, ReferenceCache, chemsys, load_references
    from matra_hpc.screen.relax import parse_protocol, relax_structures

    protocol = parse_protocol(args.relax, args.max_steps)
    # the most populated chemical systems first, until enough structures
    by_sys = Counter(chemsys(s) for _i, s, _e in pool)
    chosen, systems = [], set()
    for system, _n in by_sys.most_common():
        chosen += [x for x in pool if chemsys(x[1]) == system]
        systems.add(system)
        if len(chosen) >= args.n_hull:
            break

    def relax(structures):
        return relax_structures(structures, protocol, get_potential, max_atoms_in_batch=args.batch_atoms)

    def single_point(structure):
        from pymatgen.io.ase import AseAtomsAdaptor

        atoms = AseAtomsAdaptor.get_atoms(structure)
        atoms.calc = get_potential(protocol[-1].potential).calculator()
        return atoms.get_potential_energy() / len(atoms)

    refs = load_references(args.tokens, 0.001)
    with tempfile.TemporaryDirectory() as tmp:
        hull = HullCalculator(refs, ReferenceCache(Path(tmp), "bench"), relax, single_point, "bench")
        t0 = time.perf_counter()
        n_refs = hull.prepare(systems)
        t_refs = time.perf_counter() - t0
        t0 = time.perf_counter()
        results = relax([s for _i, s, _e in chosen])
        t_relax = time.perf_counter() - t0
        ml, dft, not_scored = [], [], Counter()
        for (_i, _s, e_dft), res in zip(chosen, results, strict=True):
            if res.structure is None or not np.isfinite(res.energy_per_atom) or res.reason in ("relax_nan",
                                                                                            "relax_exploded"):
                not_scored[res.reason or "no_structure"] += 1
                continue
            e_ml, reason = hull.e_hull(res.structure, res.energy_per_atom)
            if not reason and np.isfinite(e_dft):
                ml.append(e_ml)
                dft.append(e_dft)
            else:
                not_scored[reason or "no_dft_ehull"] += 1
    rho = spearmanr(ml, dft).statistic if len(ml) > 2 else float("nan")
    ml_a, dft_a = np.asarray(ml), np.asarray(dft)
    return {"n_structures": len(chosen), "n_scored": len(ml), "not_scored": dict(not_scored),
            "chemical_systems": len(systems),
            "references_relaxed": n_refs, "seconds_references": round(t_refs, 1), "seconds_relax": round(t_relax, 1),
            "spearman": round(float(rho), 3),
            "mae_eV_per_atom": round(float(np.mean(np.abs(ml_a - dft_a))), 4) if len(ml) else None,
            "stable_recall": round(float(np.mean(ml_a[dft_a <= 0.001] < 0.05)), 3) if np.any(dft_a <= 0.001)
            else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", default=str(REPO / "demo-out" / "tokens.zarr"),
                        help="demo token store (matra-hpc data demo --out ...)")
    parser.add_argument("--relax", default="sevennet:0.05")
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--n-relax", type=int, default=64)
    parser.add_argument("--n-hull", type=int, default=200)
    parser.add_argument("--max-sites", type=int, default=12)
    parser.add_argument("--batch-atoms", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-hull", action="store_true", help="only the throughput part")
    parser.add_argument("--skip-throughput", action="store_true", help="only the e-hull part")
    args = parser.parse_args()
    if not (Path(args.tokens) / "zarr.json").is_file():
        sys.exit(f"{args.tokens} is missing: run `matra-hpc data demo --out {args.tokens}` first")

    from matra_hpc.screen.potentials import load_potential

    def get_potential(name):
        return load_potential(name, None, args.device)

    import logging

    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    pool = _structures(args.tokens, args.max_sites)
    result = {
        "benchmark": "screen", "machine": platform.node(), "cpu": platform.processor() or platform.machine(),
        "device": args.device, "git": _git(),
    }
    if not args.skip_throughput:
        result["throughput"] = throughput(pool, args, get_potential)
    if not args.skip_hull:
        result["ehull"] = accuracy(pool, args, get_potential)
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result))


def _git() -> str | None:
    from matra_hpc.util import git_revision

    return git_revision()


if __name__ == "__main__":
    main()
