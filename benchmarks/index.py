"""Novelty index: build time, key lookups/s and peak memory at 10^6 and 10^7 synthetic entries.

The index is written in its real on-disk format (``matra_hpc/screen/index_format.py``): parts of
65,536 entries with their sorted runs, then the partition merge, then ``index.json``; lookups go
through ``NoveltyIndex.bucket`` (one key per Python call, what ``find`` does before the
matcher) and ``count_keys`` (a batch of keys per call). Entries are one-atom structures with
random 64-bit prototype keys (about 1.25 entries per key) and formula keys (about 20 entries per
key): only the keys matter for these figures. Half of the queried keys exist.

Same-run baseline: the in-memory alternative, a Python dict from key to entry list built from the
same keys (what an index held in each process's memory would cost).

Each phase runs in its own process so its peak RSS (``ru_maxrss``) is its own. The page cache is
warm (the index was just written): a cold cluster file system is slower on first touch.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/index.py [--sizes 1000000,10000000] [--store tokens.zarr]

``--store`` adds the real path on a token store: build time, then ``find`` on perturbed copies of
its rows (noise of 0.03 A per coordinate and a 1% strain, so most lose their symmetry), against
the generate stage's ``TrainingIndex`` (prototype-hash buckets only) as the baseline.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

UNIT = 1 << 16


def _peak_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


class _Clock:
    """Wall and CPU seconds of a block: on a shared machine the CPU time gives the per-core rate."""

    def __enter__(self) -> _Clock:
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.w
        self.cpu = max(time.process_time() - self.c, 1e-9)


def _keys(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    proto_pool = rng.integers(1, 2**63, size=max(1, int(n / 1.25)), dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    formula_pool = rng.integers(1, 2**63, size=max(1, n // 20), dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    return proto_pool[rng.integers(0, len(proto_pool), n)], formula_pool[rng.integers(0, len(formula_pool), n)]


def phase_build(n: int, root: Path) -> dict:
    from matra_hpc.screen import index_format as fmt
    from matra_hpc.screen.novelty import finalize_parts

    proto, formula = _keys(n, seed=1)
    t0, c0 = time.perf_counter(), time.process_time()
    names = []
    for k, start in enumerate(range(0, n, UNIT)):
        stop = min(n, start + UNIT)
        m = stop - start
        ids = [f"syn:{i}".encode() for i in range(start, stop)]
        offsets = np.zeros(m + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(b) for b in ids])
        arrays = {
            "ids_offsets": offsets,
            "lattice": np.broadcast_to(np.eye(3) * 3.0, (m, 3, 3)).copy(),
            "frac": np.zeros((m, 3), dtype=np.float32),
            "numbers": np.full(m, 14, dtype=np.uint8),
            "site_offsets": np.arange(m + 1, dtype=np.int64),
            "proto_keys": proto[start:stop],
            "formula_keys": formula[start:stop],
        }
        name = f"000-syn-{k:06d}"
        fmt.write_part(root, name, arrays, b"".join(ids), {"n": m, "n_hashed": m, "skipped": {}})
        names.append(name)
    t1 = time.perf_counter()
    meta = finalize_parts(root, names, [{"path": "synthetic", "kind": "synthetic", "rows": n}], "synthetic")
    fmt.write_json_atomic(root / fmt.INDEX_FILE, meta)
    t2 = time.perf_counter()
    cpu = time.process_time() - c0
    disk = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    return {"parts_s": round(t1 - t0, 2), "merge_s": round(t2 - t1, 2), "build_s": round(t2 - t0, 2),
            "build_cpu_s": round(cpu, 2),
            "build_entries_per_s": round(n / (t2 - t0)), "partitions": 1 << meta["partition_bits"],
            "disk_mb": round(disk / 2**20, 1), "peak_rss_mb": _peak_mb()}


def _queries(n: int, count: int) -> np.ndarray:
    proto, _ = _keys(n, seed=1)
    rng = np.random.default_rng(2)
    present = proto[rng.integers(0, n, count // 2)]
    absent = rng.integers(1, 2**63, size=count - count // 2, dtype=np.uint64) * np.uint64(2)  # even: never made
    q = np.concatenate([present, absent])
    rng.shuffle(q)
    return q


def phase_lookup(n: int, root: Path, scalar: int, batch: int) -> dict:
    from matra_hpc.screen.novelty import NoveltyIndex

    q = _queries(n, max(scalar, batch))
    keys = [int(k) for k in q[:scalar]]
    rss_before = _rss_mb()
    with _Clock() as t_open:
        index = NoveltyIndex.open(root)
    hits = 0
    with _Clock() as t_scalar:
        for k in keys:
            hits += len(index.bucket(k)) > 0
    with _Clock() as t_batch:
        counts = index.count_keys(q[:batch])
    e = int(index.bucket(keys[0])[0]) if len(index.bucket(keys[0])) else 0
    return {"open_s": round(t_open.wall, 4),
            "scalar_lookups_per_s": round(scalar / t_scalar.wall), "scalar_lookups_per_cpu_s": round(scalar / t_scalar.cpu),
            "batch_lookups_per_s": round(batch / t_batch.wall), "batch_lookups_per_cpu_s": round(batch / t_batch.cpu),
            "hit_fraction": round(hits / scalar, 3), "batch_hit_fraction": round(float(np.mean(counts > 0)), 3),
            "entry_id_example": index.entry_id(e), "rss_before_open_mb": rss_before, "peak_rss_mb": _peak_mb()}


def phase_dict(n: int, scalar: int) -> dict:
    proto, _ = _keys(n, seed=1)
    t0 = time.perf_counter()
    table: dict[int, list[int]] = {}
    for i, k in enumerate(proto.tolist()):
        table.setdefault(k, []).append(i)
    t_build = time.perf_counter() - t0
    keys = [int(k) for k in _queries(n, scalar)]
    hits = 0
    with _Clock() as t_look:
        for k in keys:
            hits += k in table
    return {"build_s": round(t_build, 2), "scalar_lookups_per_s": round(scalar / t_look.wall),
            "scalar_lookups_per_cpu_s": round(scalar / t_look.cpu),
            "hit_fraction": round(hits / scalar, 3), "peak_rss_mb": _peak_mb()}


def phase_store(store: str, root: Path, n_queries: int) -> dict:
    """A real token store: build time, then find() on perturbed copies of its rows (a small
    symmetry-breaking noise and strain, as a relaxation that lost symmetry leaves them)."""
    import warnings

    warnings.filterwarnings("ignore")
    from matra_hpc.generate.duplicates import TrainingIndex
    from matra_hpc.screen.index_sources import structure_hash
    from matra_hpc.screen.novelty import NoveltyIndex, build_index

    with _Clock() as t_build:
        summary = build_index([store], root)
    index = NoveltyIndex.open(root)
    rng = np.random.default_rng(3)
    rows = rng.choice(len(index), size=min(n_queries, len(index)), replace=False)
    out: dict = {"store_rows": summary["n_entries"], "build_s": round(t_build.wall, 2)}
    with _Clock() as t_base_build:
        base = TrainingIndex(store)
    out["baseline_training_index_build_s"] = round(t_base_build.wall, 2)
    for kind in ("shifted", "perturbed"):
        queries = []
        for e in rows.tolist():
            s = index.structure(e).copy()
            s.translate_sites(list(range(len(s))), rng.random(3).tolist())  # another origin
            if kind == "perturbed":
                for i in range(len(s)):
                    s.translate_sites([i], rng.normal(0, 0.03, 3), frac_coords=False)
                s.apply_strain(rng.normal(0, 0.01, 3).tolist())
            queries.append((index.entry_id(e), s))
        with _Clock() as t_hash:
            hashes = [structure_hash(s) for _, s in queries]
        before = dict(index.stats)
        with _Clock() as t_find:
            got = [index.find(s, prototype_hash=h) for (_, s), h in zip(queries, hashes, strict=True)]
        with _Clock() as t_base:
            base_known = [bool(h) and base.is_known(h, s) for (_, s), h in zip(queries, hashes, strict=True)]
        n = len(queries)
        out[kind] = {
            "queries": n, "hash_per_s": round(n / t_hash.wall, 1), "find_per_s": round(n / t_find.wall, 1),
            "not_novel": sum(g is not None for g in got),
            "own_id": sum(g == rid for g, (rid, _) in zip(got, queries, strict=True)),
            "proto_hits": index.stats["proto_hits"] - before["proto_hits"],
            "formula_hits": index.stats["formula_hits"] - before["formula_hits"],
            "baseline_not_novel": sum(base_known), "baseline_per_s": round(n / t_base.wall, 1),
        }
    out["supercell_retries"] = index.confirm.retries
    return out


def _child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _git() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(Path(__file__).parent), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
    except OSError:
        return None
    return out.stdout.strip() or None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000,10000000", help="entries per index, comma separated")
    parser.add_argument("--scalar", type=int, default=200_000, help="keys looked up one per call")
    parser.add_argument("--batch", type=int, default=1_000_000, help="keys looked up in one count_keys call")
    parser.add_argument("--workdir", default=None, help="where the indexes are written (default: a temp dir)")
    parser.add_argument("--store", default=None,
                        help="also a real token store (e.g. demo-out/tokens.zarr): build time and find() on "
                             "perturbed copies of its rows, against generation's TrainingIndex")
    parser.add_argument("--queries", type=int, default=100, help="find() calls on the --store index")
    parser.add_argument("--phase", choices=["build", "lookup", "dict"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--root", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.phase == "build":
        print(json.dumps(phase_build(args.n, Path(args.root))))
        return
    if args.phase == "lookup":
        print(json.dumps(phase_lookup(args.n, Path(args.root), args.scalar, args.batch)))
        return
    if args.phase == "dict":
        print(json.dumps(phase_dict(args.n, args.scalar)))
        return

    work = Path(args.workdir or tempfile.mkdtemp(prefix="matra-index-bench-"))
    results = []
    for n in [int(float(s)) for s in args.sizes.split(",")]:
        root = work / f"syn-{n}.index"
        shutil.rmtree(root, ignore_errors=True)
        common = ["--n", str(n), "--root", str(root), "--scalar", str(args.scalar), "--batch", str(args.batch)]
        build = _child(["--phase", "build", *common])
        lookup = _child(["--phase", "lookup", *common])
        baseline = _child(["--phase", "dict", *common])
        shutil.rmtree(root, ignore_errors=True)
        results.append({"entries": n, "index_build": build, "index_lookup": lookup, "baseline_dict": baseline})
    real = None
    if args.store:
        root = work / "store.index"
        shutil.rmtree(root, ignore_errors=True)
        real = phase_store(args.store, root, args.queries)
        shutil.rmtree(root, ignore_errors=True)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({
        "benchmark": "index", "git": _git(), "machine": platform.processor() or platform.machine(),
        "python": platform.python_version(), "config": {"scalar": args.scalar, "batch": args.batch, "unit": UNIT},
        "results": results, "store": real,
    }))


if __name__ == "__main__":
    main()
