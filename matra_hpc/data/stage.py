"""The data stage: read sources, filter, tokenize in parallel into a Zarr token store.

Input: sources named as in :mod:`matra_hpc.data.readers`. Output: the token store of
docs/contracts.md section C plus ``report.json`` beside its arrays.

Invariants:
- Rows are cut into shards of ``shard_size`` consecutive input records per source, so the shard
  of a record depends only on the inputs, never on the number of processes or ranks. Shard k
  is owned by rank ``k % world_size``; locally a process pool works through the same shards.
  A serial, a pooled and an MPI run therefore write identical shards.
- Each shard is written by one process and ends with its manifest; a rerun skips shards with a
  manifest and redoes the others, so kill -9 at any point loses no finished work and leaves
  no duplicate or missing row.
- train/val is a function of the prototype hash and the seed only: one crystal prototype never
  sits in both, and adding inputs never moves a row between splits.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from matra_hpc import __version__
from matra_hpc.context import RunContext
from matra_hpc.data import store as st
from matra_hpc.data.config import DataPrepareConfig, held_out_elements
from matra_hpc.data.readers import (
    ENERGY_PROVENANCE,
    SourceSpec,
    WorkItem,
    iter_unit_items,
    load_item,
    parse_source,
    read_units,
)
from matra_hpc.errors import MatraError, StoreError
from matra_hpc.tokens.format import TOKEN_FORMAT, TokenFormatError
from matra_hpc.util import file_sha256, git_revision, hold_point, write_json_atomic

log = logging.getLogger(__name__)

REJECTION_REASONS = ("parse_error", "not_periodic", "nan_or_inf", "disordered", "unknown_element",
                     "symmetry_failed", "spacegroup_1", "too_many_sites")
FILTER_REASONS = ("above_max_ehull", "held_out_system")

# Settings that change the content of the store: a resumed run must use the same ones.
_CONTENT_KEYS = ("sources", "limit", "max_wyckoff", "max_ehull", "ehull_filter_kinds", "val_frac", "seed",
                 "shard_size", "symprec", "angle_tolerance")


def split_of(prototype_hash: str, val_frac: float, seed: int) -> str:
    """``val`` when the first 8 bytes of sha256(seed:hash) / 2**64 fall below ``val_frac``."""
    digest = hashlib.sha256(f"{seed}:{prototype_hash}".encode()).digest()
    return "val" if int.from_bytes(digest[:8], "big") / 2.0**64 < val_frac else "train"




def source_record(spec: SourceSpec) -> dict[str, Any]:
    """The ``sources`` attr entry of one source: name, kind, files and their sha256."""
    paths = list(spec.paths)
    if spec.kind == "folder":
        root = Path(spec.paths[0])
        files = sorted(p for p in root.rglob("*") if p.is_file())
        h = hashlib.sha256()
        for f in files:
            h.update(f"{f.relative_to(root)}\0{file_sha256(f)}\n".encode())
        digest = h.hexdigest()
    else:
        files = [Path(p) for p in paths] + ([Path(spec.summary)] if spec.summary else [])
        if len(files) == 1:
            digest = file_sha256(files[0])
        else:
            h = hashlib.sha256()
            for f in files:
                h.update(f"{f.name}\0{file_sha256(f)}\n".encode())
            digest = h.hexdigest()
    rec = {"name": spec.name, "kind": spec.kind, "path": ",".join(paths), "summary": spec.summary,
           "sha256": digest}
    if spec.kind == "flla":
        rec["note"] = ("flla_2015 demo set (Materials Project data, CC BY 4.0; matminer 0.3.9 "
                       "matminer/datasets/flla_2015.csv), rows named mp:<material_id>")
    return rec


def energy_attr(specs: list[SourceSpec]) -> dict[str, Any]:
    per_source = {s.name if s.kind != "flla" else "mp (flla_2015)": ENERGY_PROVENANCE[s.kind] for s in specs}
    values = list(per_source.values())
    out: dict[str, Any] = {}
    for key in ("functional", "correction_scheme", "hull_reference"):
        distinct = {v[key] for v in values}
        out[key] = distinct.pop() if len(distinct) == 1 else "mixed: see per_source"
    out["per_source"] = per_source
    return out


# --------------------------------------------------------------------------------------------
# One shard (runs in a worker process or an MPI rank)


@dataclass
class ShardTask:
    store: str
    shard_id: str
    items: list[WorkItem]
    summary: str | None
    kind: str
    config: dict[str, Any]


@functools.cache
def _centring_points() -> dict[int, int]:
    """Lattice points per conventional cell of each group's standard setting (R: hexagonal axes, 3)."""
    import spglib

    points = {"P": 1, "A": 2, "B": 2, "C": 2, "I": 2, "F": 4, "R": 3}
    out: dict[int, int] = {}
    for hall in range(1, 531):
        sg = spglib.get_spacegroup_type(hall)
        out.setdefault(sg.number, points[sg.international_short[0]])  # first Hall number: standard setting
    return out


def _lattice_points(group: int) -> int:
    return _centring_points()[group]


def process_shard(task: ShardTask) -> dict[str, Any]:
    """Load, filter and tokenize the items of one shard, write it, return its manifest."""
    from matra_hpc.tokens import EncodeError, decode, encode, load_vocab, prototype_hash

    vocab = load_vocab()
    cfg = task.config
    start = time.perf_counter()
    rows = st.ShardRows()
    rejected: dict[str, list[str]] = {}
    filtered: dict[str, list[str]] = {}
    held_out: list[dict[str, Any]] = []
    hold_out = held_out_elements(cfg["hold_out_system"]) if cfg.get("hold_out_system") else None
    for item in task.items:
        loaded = load_item(item, task.summary)
        if loaded.reason is not None:
            rejected.setdefault(loaded.reason, []).append(loaded.id)
            continue
        ehull = loaded.e_above_hull
        if task.kind in cfg["ehull_filter_kinds"] and math.isfinite(ehull) and ehull > cfg["max_ehull"]:
            filtered.setdefault("above_max_ehull", []).append(loaded.id)
            continue
        properties = {"e_above_hull": ehull} if math.isfinite(ehull) else None
        try:
            seq = encode(loaded.structure, properties, symprec=cfg["symprec"],
                         angle_tolerance=cfg["angle_tolerance"], max_sites=cfg["max_wyckoff"])
        except EncodeError as exc:
            rejected.setdefault(exc.reason, []).append(loaded.id)
            continue
        except Exception as exc:  # a bug or a pathological cell must not end the job: count it
            log.warning("%s: unexpected %s while encoding: %s", loaded.id, type(exc).__name__, exc)
            rejected.setdefault("symmetry_failed", []).append(loaded.id)
            continue
        tokens = np.asarray(seq.tokens, dtype=np.int32)
        group = vocab.spacegroup_in(seq.tokens)
        try:
            # The stored cell is the decoded canonical one, so tokens and structure arrays agree exactly.
            conventional = decode(seq)
        except Exception as exc:  # an encoder/decoder disagreement: count it, keep going
            log.warning("%s: its sequence does not decode (%s)", loaded.id, exc)
            rejected.setdefault("symmetry_failed", []).append(loaded.id)
            continue
        phash = prototype_hash(seq)
        if hold_out is not None and {e.symbol for e in loaded.structure.composition.elements} == hold_out:
            # held out only once it would have been a training row, so the model could have made it
            filtered.setdefault("held_out_system", []).append(loaded.id)
            held_out.append(_held_out_record(loaded, group, ehull))
            continue
        rows.add(
            tokens=tokens, values=np.asarray(seq.values, dtype=np.float64), id=loaded.id, source=item.source,
            split=split_of(phash, cfg["val_frac"], cfg["seed"]),
            formula=loaded.structure.composition.reduced_formula, prototype_hash=phash, spacegroup=group,
            e_above_hull=ehull, e_form=loaded.e_form, lattice=conventional.lattice.matrix,
            frac_coords=conventional.frac_coords, numbers=[s.specie.Z for s in conventional],
            n_sites_primitive=len(conventional) // _lattice_points(group),
        )
    arrays = rows.arrays()
    manifest = {
        "shard": task.shard_id,
        "n_inputs": len(task.items),
        "n_rows": len(rows),
        "n_tokens": int(rows.n_tokens),
        "n_sites": int(rows.n_sites),
        "first_item": [task.items[0].file, task.items[0].index] if task.items else None,
        "rejected": rejected,
        "filtered": filtered,
        **({"held_out": held_out} if hold_out is not None else {}),
        "split_counts": {s: int(np.sum(arrays["split"] == s)) for s in ("train", "val")},
        "seconds": round(time.perf_counter() - start, 3),
        "pid": os.getpid(),
    }
    st.write_shard(task.store, task.shard_id, arrays, manifest)
    return manifest


def _held_out_record(loaded: Any, group: int, ehull: float) -> dict[str, Any]:
    """A held-out structure as the source gave it (JSON: id, formula, group, e-hull, cell, sites)."""
    structure = loaded.structure
    return {"id": loaded.id, "formula": structure.composition.reduced_formula, "spacegroup": group,
            "e_above_hull": ehull if math.isfinite(ehull) else None,
            "lattice": structure.lattice.matrix.tolist(), "numbers": [int(z) for z in structure.atomic_numbers],
            "frac_coords": structure.frac_coords.tolist()}


# --------------------------------------------------------------------------------------------
# The run


@dataclass
class PlannedShard:
    id: str
    spec: SourceSpec
    items: list[WorkItem] | None
    """None when another rank owns the shard."""


def _plan_shards(specs: list[SourceSpec], shard_size: int, limit: int | None = None, rank: int = 0,
                 world: int = 1) -> Iterator[PlannedShard]:
    """Cut every file of every source into consecutive shards, in a fixed order.

    A shard's id and items depend only on the inputs (source, file, chunk), never on ``world``.
    Ownership: a source with at least ``world`` files is split by file (a rank never reads the
    files of others: Alexandria's 50 files spread over ranks); otherwise shards go round robin
    and every rank reads the source, decoding only the records it owns.
    """
    counter = 0
    for s_index, spec in enumerate(specs):
        units = read_units(spec)
        by_file = world > 1 and limit is None and len(units) >= world
        seen = 0
        for u in range(len(units)):
            if by_file and u % world != rank:
                continue
            chunk: list[WorkItem] = []
            k = 0
            for item in iter_unit_items(spec, u):
                if limit is not None and seen >= limit:
                    break
                seen += 1
                chunk.append(item)
                if len(chunk) == shard_size:
                    owned = by_file or counter % world == rank
                    counter += 0 if by_file else 1
                    yield PlannedShard(f"{s_index:02d}-{spec.name}-{u:04d}-{k:06d}", spec, chunk if owned else None)
                    chunk, k = [], k + 1
            if chunk:
                owned = by_file or counter % world == rank
                counter += 0 if by_file else 1
                yield PlannedShard(f"{s_index:02d}-{spec.name}-{u:04d}-{k:06d}", spec, chunk if owned else None)
            if limit is not None and seen >= limit:
                break


def _content_config(config: DataPrepareConfig) -> dict[str, Any]:
    d = asdict(config)
    content = {k: d[k] for k in _CONTENT_KEYS}
    if config.hold_out_system:  # only when set, so stores made before the option still resume
        content["hold_out_system"] = "-".join(sorted(held_out_elements(config.hold_out_system)))
    return content


def init_store(config: DataPrepareConfig, specs: list[SourceSpec], run_dir: str | None = None) -> None:
    """Create the store with its attrs, or check that an existing one is the same run."""
    import zarr

    from matra_hpc.tokens import load_vocab

    out = Path(config.out)
    sources = [source_record(s) for s in specs]
    if out.exists():
        # Never delete something that is not a token store, --overwrite or not (StoreError).
        try:
            root = st._open_root(out, "r")
        except TokenFormatError:
            # A store of an older token format is rebuilt with --overwrite, never resumed.
            if not config.overwrite:
                raise
            root = None
        same = False
        if root is not None:
            recorded = dict(root.attrs.get("config", {}).get("content", {}))
            current = _content_config(config)
            # Sources are compared by what they hold, not by how their paths were spelled.
            recorded.pop("sources", None)
            current.pop("sources")
            same = recorded == current and ([(s["kind"], s["name"], s["sha256"]) for s in root.attrs.get("sources", [])]
                                            == [(s["kind"], s["name"], s["sha256"]) for s in sources])
        if same:
            return
        if not config.overwrite:
            raise StoreError(f"{out} was prepared from other inputs or settings: delete it, pass --overwrite, "
                             f"or choose another --out")
        import shutil

        shutil.rmtree(out)
    vocab = load_vocab()
    root = zarr.open_group(str(out), mode="w")
    root.attrs.update({
        "schema": st.SCHEMA,
        "created_by": {"package": __version__, "git": git_revision(), "run_dir": run_dir},
        "config": {"content": _content_config(config), "full": asdict(config)},
        "vocab": vocab.to_json(),
        "vocab_hash": vocab.hash,
        "token_format": TOKEN_FORMAT,
        "sources": sources,
        "energy": energy_attr(specs),
        "consolidated": None,
    })
    zarr.open_group(str(out / "shards"), mode="w")


def run_data_prepare(config: DataPrepareConfig, ctx: RunContext) -> dict[str, Any]:
    """Build (or finish) the token store ``config.out``; returns the report (rank 0; others get it too)."""
    from matra_hpc.tokens import load_vocab

    config.validate()
    specs = [parse_source(s) for s in config.sources]
    load_vocab()  # built once per process (about a second); forked pool workers inherit it
    t0 = time.perf_counter()
    ctx.on_rank0(init_store, config, specs, ctx.run_dir)
    shard_ids = _write_shards(config, specs, ctx)
    if ctx.comm is None and ctx.world_size > 1:
        return _finish_without_comm(config, ctx, shard_ids, time.perf_counter() - t0)
    if ctx.comm is not None and ctx.world_size > 1:
        # Ranks that split a source by file saw only their files' shards: the plan is the union.
        seen = ctx.comm.gather(shard_ids, root=0)
        if ctx.rank == 0:
            shard_ids = sorted({sid for part in seen for sid in part})

    def plan_and_report() -> dict[str, Any]:
        write_json_atomic(Path(config.out) / "shards" / st.PLAN, {"shards": shard_ids})
        return build_report(config.out, time.perf_counter() - t0, ctx, config.workers)

    report = ctx.on_rank0(plan_and_report)
    assert report is not None
    return report


def _write_shards(config: DataPrepareConfig, specs: list[SourceSpec], ctx: RunContext) -> list[str]:
    """Write this rank's unfinished shards (in a pool when ``workers`` > 1); returns every shard id seen."""
    cfg = asdict(config)
    shard_ids: list[str] = []
    done_here = skipped = 0
    pool = (ProcessPoolExecutor(max_workers=config.workers, mp_context=_mp_context(ctx))
            if config.workers > 1 else None)
    pending: set[Future] = set()
    try:
        for shard in _plan_shards(specs, config.shard_size, config.limit, ctx.rank, ctx.world_size):
            shard_ids.append(shard.id)
            if shard.items is None:
                continue
            if st.shard_done(config.out, shard.id):
                skipped += 1
                continue
            st.clear_unfinished_shard(config.out, shard.id)
            task = ShardTask(config.out, shard.id, shard.items, shard.spec.summary, shard.spec.kind, cfg)
            if pool is None:
                process_shard(task)
                done_here += 1
                hold_point("data-shard")
                continue
            pending.add(pool.submit(process_shard, task))
            if len(pending) >= 2 * config.workers:  # bound the items held in memory
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in finished:
                    f.result()
                    done_here += 1
        for f in pending:
            f.result()
            done_here += 1
    except BrokenProcessPool as exc:
        raise MatraError(f"a worker process died ({exc}); rerun the same command: finished shards are "
                         f"kept") from None
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    log.info("rank %d: wrote %d shards, skipped %d finished ones", ctx.rank, done_here, skipped)
    return shard_ids


def _finish_without_comm(config: DataPrepareConfig, ctx: RunContext, shard_ids: list[str],
                         seconds: float) -> dict[str, Any]:
    """Independent array tasks (no communicator): the last one to finish consolidates.

    Every task saw every shard id, so each can write the plan; an exclusive lock file makes
    sure only one of several tasks finishing together builds the view.
    """
    out = Path(config.out)
    write_json_atomic(out / "shards" / st.rank_plan_name(ctx.rank, ctx.world_size), {"shards": shard_ids})
    plan = st.read_plan(out)
    unfinished = [s for s in plan if not st.shard_done(out, s)] if plan is not None else None
    partial = {"store": str(out), "status": "shards written; other tasks still running",
               "unfinished_shards": len(unfinished) if unfinished is not None else None, "rank": ctx.rank}
    if unfinished is None or unfinished:
        return partial
    try:
        lock = os.open(out / "consolidate.lock", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return {**partial, "status": "another task is consolidating"}
    try:
        return build_report(config.out, seconds, ctx, config.workers)
    finally:
        os.close(lock)
        os.unlink(out / "consolidate.lock")


def _mp_context(ctx: RunContext) -> Any:
    import multiprocessing

    # fork is fast (pymatgen already imported) but unsafe after MPI_Init: spawn under MPI.
    return multiprocessing.get_context("spawn" if ctx.comm is not None else "fork")


def build_report(store: str, seconds: float, ctx: RunContext | None = None, workers: int = 1) -> dict[str, Any]:
    """Consolidate the store and write ``report.json`` from the shard manifests."""
    summary = st.consolidate(store)
    manifests = [s.manifest for s in st.finished_shards(store) if s.id in set(summary["shards"])]
    rejected: dict[str, dict[str, Any]] = {}
    filtered: dict[str, dict[str, Any]] = {}
    for m in manifests:
        for target, part in ((rejected, m["rejected"]), (filtered, m["filtered"])):
            for reason, ids in part.items():
                entry = target.setdefault(reason, {"count": 0, "ids": []})
                entry["count"] += len(ids)
                entry["ids"].extend(ids)
    n_inputs = sum(m["n_inputs"] for m in manifests)
    n_filtered = sum(v["count"] for v in filtered.values())
    n_encoded = sum(m["n_rows"] for m in manifests)
    attempted = n_inputs - n_filtered
    report = {
        "store": str(store),
        "n_inputs": n_inputs,
        "n_filtered": n_filtered,
        "n_rejected": sum(v["count"] for v in rejected.values()),
        "n_encoded": n_encoded,
        "n_rows": summary["n_rows"],
        "encodable_fraction": round(n_encoded / attempted, 6) if attempted else 0.0,
        "split_counts": summary["split_counts"],
        "rejected": dict(sorted(rejected.items())),
        "filtered": filtered,
        "duplicates": {"count": len(summary["duplicates"]), "ids": summary["duplicates"]},
        "n_shards": len(manifests),
        "seconds": round(seconds, 2),
        "world_size": ctx.world_size if ctx else 1,
        "workers_per_rank": workers,
        "content_hash": summary["content_hash"],
    }
    held_out = [h for m in manifests for h in m.get("held_out", [])]
    system = st._open_root(Path(store), "r").attrs.get("config", {}).get("content", {}).get("hold_out_system")
    if system:
        import zarr

        # attrs are outside the content hash: the rows of the store are the same with or without them
        zarr.open_group(str(store), mode="r+").attrs["held_out"] = {
            "system": system, "structures": sorted(held_out, key=lambda h: h["id"])}
        report["held_out"] = {"system": system, "count": len(held_out), "ids": sorted(h["id"] for h in held_out)}
    write_json_atomic(Path(store) / "report.json", report)
    if summary["n_rows"]:
        from matra_hpc.data.plots import plot_token_store

        report["plot"] = str(plot_token_store(store))
    return report


def run_data_consolidate(store: str) -> dict[str, Any]:
    """``matra-hpc data consolidate``: rebuild the view and report from the finished shards."""
    return build_report(store, 0.0)


def demo_config(out: str, workers: int | None = None) -> DataPrepareConfig:
    """The README demo: the vendored flla_2015 set with the paper's filters."""
    return DataPrepareConfig(sources=["flla"], out=out, workers=workers or min(8, os.cpu_count() or 1),
                             shard_size=125)
