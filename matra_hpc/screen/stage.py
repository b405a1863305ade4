"""The screen stage: relax generated candidates with ML potentials, check connectivity, novelty
and uniqueness, and place them against an ML convex hull.

Input: a consolidated generated store (contract G). Output: the screened store (contract J),
one row per generated row of the selected temperatures, ids unchanged.

Invariants:
- a task is one (temperature, shard): a fixed slice of that temperature's generated rows; its
  shard is written aside and renamed into place with its manifest, so a kill -9 loses at most
  the tasks in flight and a rerun redoes only those;
- which rows are relaxed (``--limit``) is a function of the generated store alone, computed
  identically by every process;
- MPI ranks pull tasks from a queue (atomic claim files); job-array tasks take every n-th task;
  whoever finds every shard finished consolidates (under a lock file), which also marks
  ``unique`` over the whole run in (T, shard, row) order and writes ``status/screen.jsonl``;
- hull references are relaxed once per protocol and cached in the store (ranks split them).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from matra_hpc import __version__
from matra_hpc.context import RunContext
from matra_hpc.errors import StoreError, UsageError
from matra_hpc.generate.temperatures import temperature_group
from matra_hpc.screen import store as sstore
from matra_hpc.screen.config import ScreenConfig
from matra_hpc.util import git_revision

log = logging.getLogger(__name__)

CLAIMS_DIR = ".claims"
CONSOLIDATE_LOCK = ".consolidate.lock"


# ---------------------------------------------------------------- input


def generated_temperatures(config: ScreenConfig) -> list[float]:
    """Temperatures to screen: the generated store's, or the requested subset of them."""
    from matra_hpc.generate import store as gstore

    available = gstore.store_temperatures(Path(config.generated))
    wanted = config.selected_temperatures()
    if wanted is None:
        temps = available
    else:
        missing = [t for t in wanted if t not in available]
        if missing:
            raise UsageError(f"--temps: {', '.join(temperature_group(t) for t in missing)} not in {config.generated} "
                             f"(it has {', '.join(temperature_group(t) for t in available)})")
        temps = wanted
    for t in temps:
        if not gstore.view_is_current(Path(config.generated), t):
            raise StoreError(f"{config.generated}/{temperature_group(t)} has no current consolidated view: finish "
                             "the generation first (rerun it to resume)")
    return temps


def screenable(table) -> np.ndarray:
    """Rows that generation let through: decoded, bonds ok, not a training duplicate."""
    return np.asarray(table.decodes, bool) & np.asarray(table.bonds_ok, bool) & ~np.asarray(table.dup_train, bool)


def plan_rows(generated: str | Path, temperatures: list[float], limit: int | None,
              max_atoms: int | None = None, primitive: bool = True,
              tables: dict | None = None) -> dict[float, np.ndarray]:
    """Per temperature, which rows are relaxed: screenable, up to the ``limit``-th relaxable one.

    With ``max_atoms``, a row whose cell (primitive, as generation counted it) is larger does not
    count against the limit: it is planned, and gets ``too_many_atoms`` without any work.
    ``tables``: the temperatures' views when the caller has read them already.
    """
    from matra_hpc.generate import store as gstore

    plan, left = {}, limit
    for t in temperatures:
        table = tables[t] if tables is not None else gstore.read_view(Path(generated), t)
        ok = screenable(table)
        if left is not None:
            sites = np.asarray(table.n_sites_primitive if primitive else table.n_sites_conventional)
            small = ok if max_atoms is None else ok & (sites <= max_atoms)
            small_rows = np.flatnonzero(small)
            if left == 0:
                ok = np.zeros_like(ok)
            elif len(small_rows) > left:
                ok = ok & (np.arange(len(ok)) <= small_rows[left - 1])
            left -= int(small[ok].sum())
        plan[t] = ok
    return plan


def shard_bounds(n_rows: int, shards: int, shard: int) -> tuple[int, int]:
    base, extra = divmod(n_rows, shards)
    lo = shard * base + min(shard, extra)
    return lo, lo + base + (1 if shard < extra else 0)


# ---------------------------------------------------------------- store preparation


def _fingerprint(config: ScreenConfig, gen_attrs: dict, weights: dict[str, str], ref_fp: str | None,
                 temperatures: list[float]) -> dict[str, Any]:
    from matra_hpc.screen.potentials import weights_sha256

    return {
        "generated": {"run_id": gen_attrs.get("run_id"), "fingerprint": gen_attrs.get("fingerprint")},
        "relax": config.relax, "max_steps": config.max_steps,
        "weights": {k: weights_sha256(v) for k, v in weights.items()},
        "hull_reference": ref_fp, "reference_max_ehull": config.reference_max_ehull,
        "novelty_index": str(Path(config.novelty_index).resolve()) if config.novelty_index else None,
        "temperatures": temperatures, "limit": config.limit, "shards": config.shards,
        "max_atoms": config.max_atoms, "primitive": config.primitive,
        **({"ehull_direct": config.ehull_direct} if config.ehull_direct else {}),
    }


def _prepare_store(config: ScreenConfig, ctx: RunContext) -> dict[str, Any]:
    from matra_hpc.generate import store as gstore
    from matra_hpc.screen.connectivity import BOND_SCALE
    from matra_hpc.screen.hull import CORRECTION_SCHEME, reference_fingerprint
    from matra_hpc.screen.potentials import weights_sha256

    temps = generated_temperatures(config)
    gen_attrs = dict(gstore.open_root(Path(config.generated)).attrs)
    weights = config.weight_paths()
    ref_fp = reference_fingerprint(config.hull_reference) if config.hull_reference else None
    steps = config.protocol()
    label = ",".join(s.label() for s in steps)
    attrs = {
        "schema": sstore.SCHEMA,
        "created_by": {"package": __version__, "git": git_revision(), "run_dir": ctx.run_dir},
        "config": asdict(config),
        "generated": {"path": str(Path(config.generated).resolve()), "run_id": gen_attrs.get("run_id"),
                      "fingerprint": gen_attrs.get("fingerprint")},
        "vocab_hash": gen_attrs.get("vocab_hash"),
        "run_id": config.run_id or gen_attrs.get("run_id"),
        "temperatures": temps,
        "shards": config.shards,
        "relax": [{"potential": s.potential, "fmax": s.fmax, "max_steps": s.max_steps, "weights": weights[s.potential],
                   "sha256": weights_sha256(weights[s.potential])} for s in steps],
        "energy": {"potential": label,
                   "functional": f"ML ({label}) trained on PBE/PBE+U (MP) energies",
                   "correction_scheme": CORRECTION_SCHEME,
                   "hull_reference": ({"path": str(Path(config.hull_reference).resolve()), "fingerprint": ref_fp,
                                       "max_ehull": config.reference_max_ehull}
                                      if config.hull_reference else None),
                   "ase_references": "ase.build.bulk for elements without an elemental reference"},
        "novelty_index": {"path": str(Path(config.novelty_index).resolve())} if config.novelty_index else None,
        "e_hull_direct": ({"model": config.ehull_direct, "weights": weights[config.ehull_direct],
                           "sha256": weights_sha256(weights[config.ehull_direct]),
                           "input": f"the structure relaxed by {label}", "correction": "none (the model's own)"}
                          if config.ehull_direct else None),
        "connectivity": {"bond_scale": BOND_SCALE, "radii": "covalent radii, Cordero et al. 2008 (ase.data)"},
    }
    root_attrs = sstore.init_store(Path(config.out), attrs, _fingerprint(config, gen_attrs, weights, ref_fp, temps),
                                   temps)
    return {"temperatures": temps, "run_id": root_attrs.get("run_id"), "attempt": uuid.uuid4().hex}


# ---------------------------------------------------------------- the screener


class Screener:
    """Potentials, hull and novelty index of one process; screens one task at a time."""

    def __init__(self, config: ScreenConfig, device: str, writer: str) -> None:
        from matra_hpc.screen.hull import (
            HullCalculator,
            ReferenceCache,
            load_references,
            protocol_key,
            reference_fingerprint,
        )
        from matra_hpc.screen.relax import BatchStats, protocol_label

        self.config = config
        self.device = device
        self.steps = config.protocol()
        self.label = protocol_label(self.steps)
        self.weights = config.weight_paths()
        self.stats = BatchStats()
        refs = load_references(config.hull_reference, config.reference_max_ehull) if config.hull_reference else []
        ref_fp = reference_fingerprint(config.hull_reference) if config.hull_reference else None
        cache_root = Path(config.reference_cache) if config.reference_cache else Path(config.out) / "references"
        # the cache key names the relaxation's potentials only: a direct e-hull model leaves it alone
        relax_weights = {s.potential: self.weights[s.potential] for s in self.steps}
        cache = ReferenceCache(cache_root / protocol_key(self.label, relax_weights, ref_fp), writer)
        hull_kind = "PhaseDiagram per chemical system"
        self.method = f"{self.label}|MP2020|{hull_kind}" + ("" if config.hull_reference else "|elements only")
        self.hull = HullCalculator(refs, cache, self._relax, self._single_point, self.method)
        self.index = None
        if config.novelty_index:
            from matra_hpc.screen.novelty import NoveltyIndex

            self.index = NoveltyIndex.open(config.novelty_index)
        self.direct = None
        self.direct_method = ""
        if config.ehull_direct:
            self.direct = self.potential(config.ehull_direct)
            self.direct_method = f"{config.ehull_direct}:{self.direct.sha256[:12]}|direct|geometry {self.label}"

    def potential(self, name: str):
        from matra_hpc.screen.potentials import load_potential

        return load_potential(name, self.weights[name], self.device)

    def _relax(self, structures: list) -> list:
        from matra_hpc.screen.relax import relax_structures

        return relax_structures(structures, self.steps, self.potential, batched=self.config.batched,
                                max_atoms_in_batch=self.config.batch_atoms, stats=self.stats)

    def _single_point(self, structure) -> float:
        """Energy per atom of the protocol's last potential, structure as given."""
        from pymatgen.io.ase import AseAtomsAdaptor

        atoms = AseAtomsAdaptor.get_atoms(structure)
        atoms.calc = self.potential(self.steps[-1].potential).calculator()
        try:
            return float(atoms.get_potential_energy()) / len(atoms)
        except Exception:
            return float("nan")

    def candidate_structure(self, table, r: int):
        structure = table.row_structure(r)
        if structure is not None and self.config.primitive:
            try:
                structure = structure.get_primitive_structure()
            except Exception:  # keep the cell as generated; the prechecks judge it
                pass
        return structure

    def precheck(self, structure) -> str:
        from matra_hpc.screen.relax import precheck

        reason = precheck(structure, None, self.config.max_atoms)
        if reason:
            return reason
        for name in sorted({s.potential for s in self.steps}):
            if self.potential(name).unsupported(structure.atomic_numbers):
                return "unsupported_element"
        return ""

    def screen_task(self, table, plan: np.ndarray, lo: int, hi: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Screen rows lo..hi of a temperature's generated view; returns (columns, manifest extras)."""
        from matra_hpc.screen.connectivity import n_components

        rows: dict[int, dict[str, Any]] = {}
        todo: list[tuple[int, Any]] = []
        for r in range(lo, hi):
            base = {"id": str(table.id[r]), "prototype_hash": str(table.prototype_hash[r]),
                    "formula": str(table.formula[r]), "potential": self.label}
            if not table.decodes[r]:
                rows[r] = {**base, "status": "not_screened", "reason": "not_decoded"}
                continue
            structure = table.row_structure(r)
            if not table.bonds_ok[r]:
                reason = "not_screened_bonds"
            elif table.dup_train[r]:
                reason = "not_screened_dup_train"
            elif not plan[r]:
                reason = "not_screened_limit"
            else:
                structure = self.candidate_structure(table, r)
                reason = self.precheck(structure)
            if reason:
                rows[r] = {**base, "status": "not_screened", "reason": reason,
                           "structure": structure if _finite(structure) else None}
            else:
                rows[r] = base
                todo.append((r, structure))
        results = self._relax([s for _r, s in todo]) if todo else []
        errors = {}
        for (r, _s), res in zip(todo, results, strict=True):
            row = rows[r]
            s = res.structure
            row.update(structure=s, relaxed=s is not None, energy_per_atom=res.energy_per_atom,
                       n_steps=res.n_steps, max_force=res.max_force, volume_change=res.volume_change)
            if res.error:
                errors[row["id"]] = res.error
            # the checks below must not crash the shard either: an error is recorded per row
            def guarded(what: str, fn, default, row_id: str = row["id"]):
                try:
                    return fn()
                except Exception as exc:
                    errors[row_id] = f"{what}: {type(exc).__name__}: {exc}"[:500]
                    return default

            if s is not None:
                comps = guarded("connectivity", lambda s=s: n_components(s), 0)
                row.update(n_components=comps, connected=comps == 1)
            # an exploded or NaN relaxation has no meaningful energy to place on the hull
            if s is not None and np.isfinite(res.energy_per_atom) and res.reason not in ("relax_nan", "relax_exploded"):
                e_hull, hull_reason = guarded("e_hull", lambda s=s, e=res.energy_per_atom, i=row["id"]:
                                              self.hull.e_hull(s, e, i), (float("nan"), "no_reference"))
                row.update(e_hull=e_hull, e_hull_method=self.hull.method_for(s) if np.isfinite(e_hull) else "")
                if self.direct is not None:
                    direct = guarded("e_hull_direct", lambda s=s: float(self.direct.predict(s)), float("nan"))
                    row.update(e_hull_direct=direct, e_hull_direct_method=self.direct_method if np.isfinite(direct)
                               else "")
            else:
                hull_reason = "no_reference"
            if res.reason:
                row.update(status="failed", reason=res.reason)
                continue
            if self.index is not None:
                # an index error leaves the row novel: nothing known was found
                match = guarded("novelty", lambda s=s: self.index.find(s), None)
                row.update(novel=match is None, novel_match=match or "")
            else:
                row.update(novel=True)
            if not row["connected"]:
                row.update(status="rejected", reason="disconnected")
            elif hull_reason:
                row.update(status="rejected", reason=hull_reason)
            else:
                row.update(status="screened", reason="")
        builder = sstore.RowBuilder()
        for r in range(lo, hi):
            builder.add(**rows[r])
        return builder.build(), {"relaxed": len(todo), "errors": errors}

    def prepare_hull(self, systems: set[frozenset[str]], share: tuple[int, int]) -> int:
        return self.hull.prepare(systems, share)


def _finite(structure) -> bool:
    if structure is None:
        return False
    return bool(np.all(np.isfinite(structure.lattice.matrix)) and np.all(np.isfinite(structure.frac_coords)))


# ---------------------------------------------------------------- tasks and consolidation


def _claim(out: Path, attempt: str, index: int) -> bool:
    folder = out / CLAIMS_DIR / attempt
    folder.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(folder / str(index), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def _all_done(out: Path, temperatures: list[float], shards: int) -> bool:
    return all(sstore.shard_done(out, t, s) for t in temperatures for s in range(shards))


def consolidate_if_complete(out: Path, temperatures: list[float], shards: int) -> dict[str, Any] | None:
    """Consolidate when every shard is finished, under a lock file; None if not (yet) this process's turn."""
    if not _all_done(out, temperatures, shards):
        return None
    lock = out / CONSOLIDATE_LOCK
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        if time.time() - lock.stat().st_mtime < 3600:
            return None  # another task consolidates right now
        lock.unlink(missing_ok=True)  # left by a killed consolidation: take over
        return consolidate_if_complete(out, temperatures, shards)
    os.close(fd)
    try:
        summary = sstore.consolidate(out)
    finally:
        lock.unlink(missing_ok=True)
    import shutil

    shutil.rmtree(out / CLAIMS_DIR, ignore_errors=True)
    return summary


def run_screen(config: ScreenConfig, ctx: RunContext) -> dict[str, Any]:
    """Screen every (temperature, shard) task not yet in the store; consolidate when all are done."""
    from matra_hpc.generate import store as gstore
    from matra_hpc.screen.hull import chemsys

    config.validate()
    out = Path(config.out)
    mpi = ctx.comm is not None and ctx.world_size > 1
    array = ctx.comm is None and ctx.world_size > 1
    if array:
        # Independent array tasks: no rank 0 to wait for. The store must exist, or be created by
        # whichever task comes first (init_store refuses a different fingerprint either way).
        prep = _prepare_array(config, ctx)
    else:
        prep = ctx.on_rank0(_prepare_store, config, ctx)
    temps, attempt = prep["temperatures"], prep["attempt"]
    device = config.device or ctx.device
    if config.threads is not None:
        import torch

        torch.set_num_threads(config.threads)
    writer = f"r{ctx.rank}-{uuid.uuid4().hex[:8]}"
    # every temperature's view, read once: the plan (--limit runs over the whole run) and the tasks
    tables = {t: gstore.read_view(Path(config.generated), t) for t in temps}
    plan = plan_rows(config.generated, temps, config.limit, config.max_atoms, config.primitive, tables)
    tasks = [(t, s) for t in temps for s in range(config.shards)]
    mine = tasks[ctx.rank::ctx.world_size] if array else tasks
    screener = Screener(config, device, writer)
    started = time.time()

    # Hull references of every chemical system this process may meet, relaxed once (ranks split them).
    systems: set[frozenset[str]] = set()
    for t, s in mine:
        table = tables[t]
        lo, hi = shard_bounds(len(table), config.shards, s)
        for r in np.flatnonzero(plan[t][lo:hi]) + lo:
            # only candidates that will be relaxed need a hull: a precheck reject (an element the
            # potential lacks, too many atoms, bad geometry) must not make references be relaxed
            structure = screener.candidate_structure(table, int(r))
            if structure is not None and not screener.precheck(structure):
                systems.add(chemsys(structure))
    share = (ctx.rank, ctx.world_size) if mpi else (0, 1)
    n_refs = screener.prepare_hull(systems, share)
    if mpi:
        ctx.comm.Barrier()
        screener.hull.reload()
        if ctx.rank != 0:
            n_refs = 0

    done_here, skipped = [], 0
    for index, (t, s) in enumerate(tasks):
        if (t, s) not in mine:
            continue
        if sstore.shard_done(out, t, s):
            skipped += 1
            continue
        if mpi and not _claim(out, attempt, index):
            continue
        table = tables[t]
        lo, hi = shard_bounds(len(table), config.shards, s)
        t0 = time.time()
        data, extra = screener.screen_task(table, plan[t], lo, hi)
        manifest = {"run_id": prep.get("run_id"), "temperature": t, "shard": s, "rank": ctx.rank,
                    "rows": hi - lo, "row_range": [lo, hi], "seconds": round(time.time() - t0, 3),
                    "device": device, **extra}
        sstore.write_shard(out, t, s, data, manifest)
        done_here.append(f"{temperature_group(t)}/s{s}")
        log.info("rank %d: %s shard %d: %d rows, %d relaxed in %.1fs", ctx.rank, temperature_group(t), s, hi - lo,
                 extra["relaxed"], manifest["seconds"])
    if mpi:
        ctx.comm.Barrier()
    summary = None
    if not mpi or ctx.rank == 0:
        summary = consolidate_if_complete(out, temps, config.shards)
    result = {"store": str(out), "rank": ctx.rank, "tasks_done_here": done_here, "tasks_skipped": skipped,
              "references_relaxed_here": n_refs, "seconds": round(time.time() - started, 1),
              "batch": {k: v for k, v in asdict(screener.stats).items() if k != "errors"},
              "consolidated": summary is not None}
    if summary is not None:
        result.update(summary)
    return result


def _prepare_array(config: ScreenConfig, ctx: RunContext) -> dict[str, Any]:
    """Array tasks start independently: the first creates the store; later ones reopen it."""
    lock = Path(str(config.out) + ".init-lock")
    for _attempt in range(600):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if time.time() - lock.stat().st_mtime > 600:
                lock.unlink(missing_ok=True)
            time.sleep(1.0)
            continue
        os.close(fd)
        try:
            if (Path(config.out) / "zarr.json").is_file():
                # Another task created it: only check the fingerprint; never clean up under running tasks.
                return _reopen(config)
            return _prepare_store(config, ctx)
        finally:
            lock.unlink(missing_ok=True)
    raise StoreError(f"could not take {lock} within 10 minutes")


def _reopen(config: ScreenConfig) -> dict[str, Any]:
    from matra_hpc.generate import store as gstore
    from matra_hpc.screen.hull import reference_fingerprint

    temps = generated_temperatures(config)
    gen_attrs = dict(gstore.open_root(Path(config.generated)).attrs)
    ref_fp = reference_fingerprint(config.hull_reference) if config.hull_reference else None
    expected = _fingerprint(config, gen_attrs, config.weight_paths(), ref_fp, temps)
    root = sstore.open_root(config.out)
    old = root.attrs.get("fingerprint", {})
    # JSON round trip: tuples and lists compare alike
    import json

    if json.loads(json.dumps(old)) != json.loads(json.dumps(expected)):
        raise StoreError(f"{config.out} was written by a different screening; resume needs the same settings")
    return {"temperatures": temps, "run_id": root.attrs.get("run_id"), "attempt": uuid.uuid4().hex}
