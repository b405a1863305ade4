"""Throughput of the token representation on one core over the flla_2015 demo set.

Prints one JSON line: config, machine, git revision, encodes/s and decodes/s, and same-run
baselines: pymatgen's SpacegroupAnalyzer conventional-cell path and a bare spglib dataset
call (the floor any spglib-based encoder pays). Not a test; run it on a quiet machine:

    OMP_NUM_THREADS=1 python benchmarks/tokens.py [--limit N] [--repeat R]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path


def _git_revision() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="first N flla structures (default all 3,938)")
    parser.add_argument("--repeat", type=int, default=1, help="passes over the set for each timing")
    parser.add_argument(
        "--baseline-limit", type=int, default=500, help="structures for the pymatgen baseline"
    )
    args = parser.parse_args()

    import numpy as np
    import spglib
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    from matra_hpc.data.demo import iter_flla
    from matra_hpc.tokens import EncodeError, decode, encode, load_vocab
    from matra_hpc.tokens.wyckoff import group_setting

    structures = [r.structure for r in iter_flla(args.limit)]
    ordered = [s for s in structures if s.is_ordered]
    load_vocab()
    for g in range(1, 231):
        group_setting(g)  # table build is a one-off per process, not per structure

    start = time.perf_counter()
    sequences = []
    for _ in range(args.repeat):
        sequences = []
        for s in structures:
            try:
                sequences.append(encode(s))
            except EncodeError:
                pass
    encode_s = time.perf_counter() - start

    start = time.perf_counter()
    for _ in range(args.repeat):
        for seq in sequences:
            decode(seq)
    decode_s = time.perf_counter() - start

    cells = [(s.lattice.matrix, s.frac_coords, np.array(s.atomic_numbers)) for s in ordered]
    start = time.perf_counter()
    for _ in range(args.repeat):
        for cell in cells:
            spglib.get_symmetry_dataset(cell, symprec=0.01, angle_tolerance=5.0)
    spglib_s = time.perf_counter() - start

    baseline = ordered[: args.baseline_limit]
    start = time.perf_counter()
    for s in baseline:
        SpacegroupAnalyzer(s, symprec=0.01, angle_tolerance=5.0).get_conventional_standard_structure()
    sga_s = time.perf_counter() - start

    print(
        json.dumps(
            {
                "benchmark": "tokens",
                "config": {
                    "set": "flla_2015",
                    "structures": len(structures),
                    "repeat": args.repeat,
                    "symprec": 0.01,
                    "angle_tolerance": 5.0,
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                },
                "machine": {
                    "cpu": _cpu_model(),
                    "cores": os.cpu_count(),
                    "load_avg_1m": round(os.getloadavg()[0], 2),
                    "python": platform.python_version(),
                    "spglib": spglib.__version__,
                },
                "git": _git_revision(),
                "encodes_per_s": _rate(len(structures) * args.repeat, encode_s),
                "decodes_per_s": _rate(len(sequences) * args.repeat, decode_s),
                "encoded": len(sequences),
                "baseline_spglib_dataset_per_s": _rate(len(cells) * args.repeat, spglib_s),
                "baseline_pymatgen_sga_conventional_per_s": _rate(len(baseline), sga_s),
            }
        )
    )


if __name__ == "__main__":
    main()
