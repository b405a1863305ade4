"""Throughput of ``data prepare``: structures/s per process, and the speed-up from 1 to 2 processes.

Runs the real stage on the first N structures of the vendored flla_2015 set three ways, each
into a fresh store: serial (1 process), a local pool of 2 workers, and ``mpirun -n 2``. The
time is the stage's own (reading, encoding, writing shards, consolidating), taken from the
report, so interpreter start-up is excluded. Prints one JSON line.

    .venv/bin/python benchmarks/data_prepare.py [--n 800] [--shard-size 50]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from matra_hpc.context import local_context  # noqa: E402
from matra_hpc.data.config import DataPrepareConfig  # noqa: E402
from matra_hpc.data.stage import run_data_prepare  # noqa: E402
from matra_hpc.util import git_revision  # noqa: E402


def _run_local(out: Path, n: int, shard_size: int, workers: int) -> dict:
    config = DataPrepareConfig(sources=["flla"], out=str(out), limit=n, shard_size=shard_size, workers=workers)
    return run_data_prepare(config, local_context())


def _run_mpi(out: Path, n: int, shard_size: int, ranks: int) -> dict:
    mpirun = Path(sys.executable).parent / "mpirun"
    cmd = [str(mpirun), "-n", str(ranks), sys.executable, "-m", "matra_hpc", "data", "prepare", "flla",
           "--out", str(out), "--limit", str(n), "--shard-size", str(shard_size)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=800, help="structures (first N of flla_2015)")
    parser.add_argument("--shard-size", type=int, default=50)
    parser.add_argument("--no-mpi", action="store_true", help="skip the mpirun -n 2 run")
    args = parser.parse_args()

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        # Warm caches (vocab, Wyckoff tables, pymatgen imports) outside the timed runs.
        _run_local(Path(tmp) / "warm.zarr", 20, 20, 1)
        for label, runner, procs in (("serial", lambda o: _run_local(o, args.n, args.shard_size, 1), 1),
                                     ("pool2", lambda o: _run_local(o, args.n, args.shard_size, 2), 2),
                                     ("mpi2", lambda o: _run_mpi(o, args.n, args.shard_size, 2), 2)):
            if label == "mpi2" and args.no_mpi:
                continue
            start = time.perf_counter()
            report = runner(Path(tmp) / f"{label}.zarr")
            wall = time.perf_counter() - start
            seconds = report["seconds"]
            results[label] = {
                "processes": procs,
                "stage_seconds": seconds,
                "wall_seconds": round(wall, 2),
                "structures_per_s": round(report["n_inputs"] / seconds, 1),
                "structures_per_s_per_process": round(report["n_inputs"] / seconds / procs, 1),
                "content_hash": report["content_hash"],
            }
    serial = results["serial"]["stage_seconds"]
    line = {
        "benchmark": "data_prepare",
        "config": {"n_structures": args.n, "shard_size": args.shard_size, "source": "flla_2015"},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_avg_1m": round(os.getloadavg()[0], 2)},
        "git": git_revision(),
        "results": results,
        "speedup_pool2_vs_serial": round(serial / results["pool2"]["stage_seconds"], 2),
        "speedup_mpi2_vs_serial": (round(serial / results["mpi2"]["stage_seconds"], 2) if "mpi2" in results
                                   else None),
        "same_content": len({r["content_hash"] for r in results.values()}) == 1,
    }
    print(json.dumps(line))


if __name__ == "__main__":
    main()
