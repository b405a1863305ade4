"""PyXtal baseline throughput: structures/s of `baseline pyxtal` next to PyXtal's own rate.

Two timings in the same run, on one process:

- ``pyxtal``: bare ``pyxtal.from_random`` calls over space groups drawn uniformly in 2..230 with a
  fixed compositions list (NaCl-like 1:1, 1:2, 2:3, 1:1:3 formula units, 4-12 atoms per formula
  multiple), counting only crystals PyXtal places (its own rate, nothing else done);
- ``baseline``: ``baseline_shard`` of the evaluation stage, which draws charge-balanced
  compositions with smact, places them with PyXtal under the site limits, then encodes, decodes
  and checks every row as a generated row (the store write excluded).

The ratio says what the baseline's extra work (smact, encode/decode, checks) costs per structure.
Usage: python benchmarks/baseline.py [--n 64] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings

import numpy as np

from matra_hpc.evaluate.baseline import baseline_shard
from matra_hpc.evaluate.config import BaselineConfig
from matra_hpc.util import git_revision

FORMULAS = ((["Na", "Cl"], [1, 1]), (["Mg", "F"], [1, 2]), (["Al", "O"], [2, 3]), (["Ca", "Ti", "O"], [1, 1, 3]))


def pyxtal_rate(n: int, seed: int) -> tuple[float, int, int]:
    """(seconds, structures placed, attempts) of bare PyXtal until n crystals are placed."""
    from pyxtal import pyxtal

    rng = np.random.default_rng(seed)
    placed = attempts = 0
    started = time.perf_counter()
    while placed < n:
        attempts += 1
        group = int(rng.integers(2, 231))
        species, unit = FORMULAS[int(rng.integers(len(FORMULAS)))]
        z = int(rng.integers(1, 5))
        crystal = pyxtal()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                crystal.from_random(3, group, species, [z * c for c in unit], random_state=int(rng.integers(2**31 - 1)))
        except Exception:  # the group's positions cannot hold that composition: try another
            continue
        placed += bool(crystal.valid)
    return time.perf_counter() - started, placed, attempts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="structures per timing (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    config = BaselineConfig(out="unused", n=args.n, seed=args.seed)
    baseline_shard(BaselineConfig(out="unused", n=2, seed=args.seed + 1), "warm", 0)  # imports, smact tables
    started = time.perf_counter()
    table, stats = baseline_shard(config, "bench", 0)
    baseline_s = time.perf_counter() - started
    raw_s, placed, attempts = pyxtal_rate(args.n, args.seed)
    print(json.dumps({
        "benchmark": "baseline", "n": args.n, "seed": args.seed,
        "baseline": {"structures": len(table), "seconds": round(baseline_s, 3),
                     "structures_per_s": round(len(table) / baseline_s, 3), "draws": stats["draws"]},
        "pyxtal": {"structures": placed, "attempts": attempts, "seconds": round(raw_s, 3),
                   "structures_per_s": round(placed / raw_s, 3)},
        "baseline_over_pyxtal": round((len(table) / baseline_s) / (placed / raw_s), 3),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "omp_threads": os.environ.get("OMP_NUM_THREADS")},
        "git": git_revision(),
    }))


if __name__ == "__main__":
    main()
