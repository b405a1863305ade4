"""vasp-prep: candidates prepared per second, and the folder layout of a 150,000-candidate tree.

A screened store of N synthetic candidates (rock-salt and caesium-chloride cells of 40 element
pairs, oxides and fluorides with +U metals among them, lattice constants jittered) is written
with the screen stage's own writer; then ``run_vasp_prep`` prepares all of them (selection,
MPRelaxSet with the paper's settings, POTCAR.spec, candidate.json, status log, manifest).

Same-run baseline: pymatgen alone, ``MPRelaxSet(...).write_input(potcar_spec=True)`` into plain
folders for the same structures: what the stage's bookkeeping (atomic renames, sharding, the
status log, the manifest) costs on top of the input writing itself.

Layout: directory paths of 150,000 generated-style ids (``<run>:T0.70:s<shard>:<i>``) computed
and timed, with the number of block folders and the most entries in one folder.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/vasp_prep.py [--n 2000] [--workers 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

PAIRS = [("Na", "Cl"), ("Mg", "O"), ("Fe", "O"), ("Co", "F"), ("Ni", "O"), ("Ca", "F"), ("Li", "F"), ("K", "Br"),
         ("Mn", "O"), ("Cu", "Cl"), ("Zn", "S"), ("Ba", "O"), ("Sr", "O"), ("Cs", "I"), ("Ag", "Cl"), ("Ti", "N"),
         ("V", "O"), ("Cr", "O"), ("Sc", "N"), ("Rb", "Br"), ("Al", "N"), ("Ga", "P"), ("In", "As"), ("Pb", "S"),
         ("Sn", "Te"), ("Cd", "Se"), ("Y", "N"), ("Zr", "C"), ("Nb", "C"), ("Hf", "C"), ("Ta", "N"), ("Mo", "C"),
         ("W", "C"), ("Li", "H"), ("Na", "H"), ("K", "Cl"), ("Ca", "O"), ("Co", "O"), ("Ni", "F"), ("Fe", "F")]


def structures(n: int, seed: int = 0) -> list:
    from pymatgen.core import Lattice, Structure

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a, b = PAIRS[i % len(PAIRS)]
        if i % 2:
            h = rng.uniform(4.0, 6.0) / 2
            lattice = Lattice([[0, h, h], [h, 0, h], [h, h, 0]])  # rock salt, primitive
            out.append(Structure(lattice, [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]]))
        else:
            out.append(Structure(Lattice.cubic(rng.uniform(3.0, 4.5)), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]]))
    return out


class _AllUnique:
    def first_seen(self, candidate_id: str, structure: object) -> None:
        return None


def write_store(path: Path, items: list, shards: int = 4) -> None:
    from matra_hpc.screen.store import RowBuilder, consolidate, init_store, write_shard

    init_store(path, {"schema": "matra-hpc/screened/1", "run_id": "bench", "temperatures": [0.7], "shards": shards},
               {"bench": len(items)}, [0.7])
    rng = np.random.default_rng(1)
    per = -(-len(items) // shards)
    for s in range(shards):
        builder = RowBuilder()
        for i, structure in enumerate(items[s * per:(s + 1) * per]):
            builder.add(id=f"bench:T0.70:s{s}:{i}", status="screened", structure=structure, relaxed=True,
                        e_hull=float(rng.uniform(-0.05, 0.3)), energy_per_atom=-5.0, e_hull_method="bench",
                        connected=True, novel=True, unique=True, potential="bench")
        write_shard(path, 0.7, s, builder.build(), {"bench": True})
    consolidate(path, uniqueness=_AllUnique())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="synthetic candidates (default 2000)")
    parser.add_argument("--workers", type=int, default=1, help="vasp-prep worker processes")
    parser.add_argument("--baseline-n", type=int, default=500, help="structures for the pymatgen baseline")
    parser.add_argument("--layout-n", type=int, default=150_000, help="ids for the layout figure")
    args = parser.parse_args()

    from pymatgen.io.vasp.sets import MPRelaxSet

    from matra_hpc.context import local_context
    from matra_hpc.dft import VaspPrepConfig, run_vasp_prep
    from matra_hpc.dft.layout import candidate_relpath, folder_layout
    from matra_hpc.util import git_revision

    warnings.simplefilter("ignore")
    root = Path(tempfile.mkdtemp(prefix="vasp-prep-bench-"))
    try:
        items = structures(args.n)
        store = root / "screened.zarr"
        write_store(store, items)

        t0, c0 = time.perf_counter(), time.process_time()
        result = run_vasp_prep(VaspPrepConfig(store=str(store), out=str(root / "vasp"), top=args.n,
                                              workers=args.workers), local_context())
        prep_wall, prep_cpu = time.perf_counter() - t0, time.process_time() - c0
        assert result["complete"] and result["candidates"] == args.n

        base = items[: args.baseline_n]
        t0 = time.perf_counter()
        for i, structure in enumerate(base):
            MPRelaxSet(structure, user_kpoints_settings={"grid_density": 1000}, force_gamma=True).write_input(
                str(root / "plain" / str(i)), potcar_spec=True)
        base_wall = time.perf_counter() - t0

        ids = [f"gen-20261201T000000:T{0.7 + 0.05 * (i % 20):.2f}:s{i % 64}:{i}" for i in range(args.layout_n)]
        t0 = time.perf_counter()
        paths = [candidate_relpath(cid, rank) for rank, cid in enumerate(ids)]
        layout_s = time.perf_counter() - t0
        assert len(set(paths)) == len(paths)
        layout = folder_layout(args.layout_n)

        print(json.dumps({
            "benchmark": "vasp_prep",
            "config": {"n": args.n, "workers": args.workers, "baseline_n": args.baseline_n,
                       "kpoints_per_atom": 1000, "potcar": "POTCAR.spec"},
            "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                        "python": platform.python_version()},
            "git": git_revision(),
            "candidates_per_s": round(args.n / prep_wall, 1),
            "candidates_per_cpu_s": round(args.n / max(prep_cpu, 1e-9), 1),
            "seconds": round(prep_wall, 2),
            "baseline_pymatgen_write_input_per_s": round(len(base) / base_wall, 1),
            "layout": {**layout, "paths_per_s": round(args.layout_n / layout_s), "seconds": round(layout_s, 3)},
            "hours_for_150000_at_this_rate": round(150_000 / (args.n / prep_wall) / 3600, 2),
        }))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
