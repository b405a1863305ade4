"""Throughput of the token representation on one core over the flla_2015 demo set.

Prints one JSON line: config, machine, git revision; full encodes/s with each symmetry
finder (moyopy, the default, and spglib) over the whole set, how many structures the two
encode to identical sequences (and the ids that differ), CPU milliseconds per encode, decodes/s,
and same-run baselines:
bare moyopy and spglib dataset calls (the floor an encoder on each pays) and pymatgen's
SpacegroupAnalyzer conventional-cell path. Rates are per CPU second of this process
(``time.process_time``), so other jobs on a shared machine slow them less than wall time
would; ``wall_encodes_per_s`` is there too. Not a test; run it on a quiet machine:

    OMP_NUM_THREADS=1 python benchmarks/tokens.py [--limit N] [--repeat R]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from matra_hpc.util import git_revision


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

    import moyopy
    import numpy as np
    import spglib
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    from matra_hpc.data.demo import iter_flla
    from matra_hpc.tokens import EncodeError, decode, encode, load_vocab
    from matra_hpc.tokens.roundtrip import same_sequence
    from matra_hpc.tokens.wyckoff import group_setting

    records = list(iter_flla(args.limit))
    structures = [r.structure for r in records]
    ordered = [s for s in structures if s.is_ordered]
    load_vocab()
    for g in range(1, 231):
        group_setting(g)  # table build is a one-off per process, not per structure

    def encode_all(symmetry: str) -> tuple[list, float, float]:
        out: list = []
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(args.repeat):
            out = []
            for s in structures:
                try:
                    out.append(encode(s, symmetry=symmetry))
                except EncodeError as exc:
                    out.append(exc.reason)
        return out, time.process_time() - cpu, time.perf_counter() - wall

    results = {name: encode_all(name) for name in ("moyopy", "spglib")}
    sequences = [seq for seq in results["moyopy"][0] if not isinstance(seq, str)]
    differ = [
        r.material_id
        for r, a, b in zip(records, results["moyopy"][0], results["spglib"][0], strict=True)
        if (isinstance(a, str) or isinstance(b, str))
        and a != b
        or not (isinstance(a, str) or isinstance(b, str))
        and not same_sequence(a, b, tol=1e-9)
    ]

    start = time.process_time()
    for _ in range(args.repeat):
        for seq in sequences:
            decode(seq)
    decode_s = time.process_time() - start

    cells = [(s.lattice.matrix, s.frac_coords, np.array(s.atomic_numbers)) for s in ordered]
    start = time.process_time()
    for _ in range(args.repeat):
        for cell in cells:
            spglib.get_symmetry_dataset(cell, symprec=0.01, angle_tolerance=5.0)
    spglib_s = time.process_time() - start
    setting = moyopy.Setting.standard()
    start = time.process_time()
    for _ in range(args.repeat):
        for cell in cells:
            moyopy.MoyoDataset(moyopy.Cell(*cell), symprec=0.01, setting=setting)
    moyopy_s = time.process_time() - start

    baseline = ordered[: args.baseline_limit]
    start = time.process_time()
    for s in baseline:
        SpacegroupAnalyzer(s, symprec=0.01, angle_tolerance=5.0).get_conventional_standard_structure()
    sga_s = time.process_time() - start

    n = len(structures) * args.repeat
    print(
        json.dumps(
            {
                "benchmark": "tokens",
                "config": {
                    "set": "flla_2015",
                    "structures": len(structures),
                    "repeat": args.repeat,
                    "symprec": 0.01,
                    "angle_tolerance_spglib": 5.0,
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                    "clock": "process_time",
                },
                "machine": {
                    "cpu": _cpu_model(),
                    "cores": os.cpu_count(),
                    "load_avg_1m": round(os.getloadavg()[0], 2),
                    "python": platform.python_version(),
                    "spglib": spglib.__version__,
                    "moyopy": moyopy.__version__,
                },
                "git": git_revision(),
                "encodes_per_s": _rate(n, results["moyopy"][1]),
                "cpu_ms_per_encode": round(1000 * results["moyopy"][1] / n, 3),
                "wall_encodes_per_s": _rate(n, results["moyopy"][2]),
                "encodes_per_s_spglib": _rate(n, results["spglib"][1]),
                "cpu_ms_per_encode_spglib": round(1000 * results["spglib"][1] / n, 3),
                "encoded": len(sequences),
                "identical_sequences": len(structures) - len(differ),
                "differ": differ,
                "decodes_per_s": _rate(len(sequences) * args.repeat, decode_s),
                "baseline_moyopy_dataset_per_s": _rate(len(cells) * args.repeat, moyopy_s),
                "baseline_spglib_dataset_per_s": _rate(len(cells) * args.repeat, spglib_s),
                "baseline_pymatgen_sga_conventional_per_s": _rate(len(baseline), sga_s),
            }
        )
    )


if __name__ == "__main__":
    main()
