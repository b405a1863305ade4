"""vasp-prep: the chosen candidates of a screened store -> one VASP input directory each.

Resumable and safe to kill at any point: the selection is written first (``plan.json``, reused by
a rerun, refused when the settings differ), each candidate is written into a ``.partial-``
folder and renamed into place once complete (``candidate.json`` last), and the manifest comes
last of all. A rerun removes partial folders, skips finished candidates and writes the rest, so
the tree ends identical to an uninterrupted run. MPI ranks (or array shards) split the
candidates by rank order (``i % world_size``); each rank may use a process pool.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from matra_hpc import __version__
from matra_hpc.context import RunContext
from matra_hpc.dft.config import VaspPrepConfig
from matra_hpc.dft.inputs import write_inputs
from matra_hpc.dft.layout import (
    CANDIDATE_FILE,
    MANIFEST,
    PLAN,
    TREE_SCHEMA,
    TreeError,
    candidate_relpath,
    folder_layout,
    read_json,
    write_json_atomic,
)
from matra_hpc.dft.select import Choice, load_structures, select_candidates
from matra_hpc.dft.status import append_events, writer_name
from matra_hpc.util import git_revision, hold_point

log = logging.getLogger(__name__)


def _source(store: str) -> dict[str, Any]:
    from matra_hpc.errors import StoreError, UsageError
    from matra_hpc.screen.store import SCHEMA, open_root

    try:
        root = open_root(store)
    except StoreError as exc:
        raise UsageError(f"vasp-prep needs a screened store: {exc}") from None
    attrs = dict(root.attrs)
    return {"path": str(Path(store).resolve()), "schema": SCHEMA, "run_id": attrs.get("run_id"),
            "fingerprint": attrs.get("fingerprint")}


def _plan(config: VaspPrepConfig, ctx: RunContext) -> dict[str, Any]:
    """The selection: read from plan.json when a previous run wrote it, else computed and written."""
    tree = Path(config.out)
    plan_path = tree / PLAN
    source = _source(config.store)
    fingerprint = config.fingerprint()
    if plan_path.is_file():
        plan = read_json(plan_path)
        if plan.get("schema") != TREE_SCHEMA:
            raise TreeError(f"{plan_path} was not written by vasp-prep")
        if plan["config"] != fingerprint or plan["source"]["path"] != source["path"] \
                or plan["source"]["fingerprint"] != source["fingerprint"]:
            raise TreeError(f"{tree} was prepared from another store or with other settings; "
                            "pick another --out (an existing tree is never overwritten)")
        return plan
    if tree.exists() and any(p for p in tree.iterdir() if not p.name.startswith(".")):
        raise TreeError(f"{tree} exists and is not a VASP tree from vasp-prep; pick another --out")
    choices, summary = select_candidates(config.store, config)
    plan = {
        "schema": TREE_SCHEMA,
        "source": source,
        "config": fingerprint,
        "selection": summary,
        "layout": folder_layout(len(choices), config.block_size),
        "candidates": [
            {"id": c.id, "dir": candidate_relpath(c.id, i, config.block_size), "group": c.group, "row": c.row,
             "e_hull": c.e_hull, "energy_per_atom": c.energy_per_atom, "formula": c.formula,
             "n_sites": c.n_sites}
            for i, c in enumerate(choices)
        ],
    }
    if ctx.comm is not None:
        # one rank writes; the others wait for the file rather than racing on the rename
        if ctx.is_main:
            tree.mkdir(parents=True, exist_ok=True)
            write_json_atomic(plan_path, plan)
        ctx.comm.Barrier()
        return read_json(plan_path)
    tree.mkdir(parents=True, exist_ok=True)
    if not plan_path.is_file():
        write_json_atomic(plan_path, plan)
    return read_json(plan_path)


def plan_hash(plan: dict[str, Any]) -> str:
    """A tree's identity in the status log: a function of its plan, so it survives moving the tree."""
    text = json.dumps(plan, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _write_one(job: dict[str, Any]) -> str:
    """Write one candidate's directory (runs in a pool worker); returns its relative path."""
    from pymatgen.core import Structure

    tree = Path(job["tree"])
    final = tree / job["entry"]["dir"]
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.parent / f".partial-{final.name}-{uuid.uuid4().hex[:8]}"
    partial.mkdir()
    structure = Structure.from_dict(job["structure"])
    symbols = write_inputs(structure, partial, kpoints_per_atom=job["kpoints_per_atom"], incar=job["incar"],
                           potcar_dir=job["potcar_dir"])
    hold_point("vasp-prep-candidate")  # tests kill -9 here: inputs written, candidate.json not yet
    entry = job["entry"]
    record = {
        "id": entry["id"],
        "source": {"store": job["store"], "group": entry["group"], "row": entry["row"]},
        "ml": {"e_hull": entry["e_hull"], "energy_per_atom": entry["energy_per_atom"]},
        "formula": structure.composition.reduced_formula,
        "potcar_symbols": symbols,
        "tree_schema": TREE_SCHEMA,
    }
    write_json_atomic(partial / CANDIDATE_FILE, record)
    os.rename(partial, final)
    return entry["dir"]


def _done(tree: Path, entry: dict[str, Any]) -> bool:
    return (tree / entry["dir"] / CANDIDATE_FILE).is_file()


def _clean_partials(tree: Path, entries: list[dict[str, Any]]) -> None:
    """Remove what a killed writer left of these candidates (partials, folders without candidate.json)."""
    names_by_block: dict[str, set[str]] = {}
    for entry in entries:
        block, name = entry["dir"].split("/")
        names_by_block.setdefault(block, set()).add(name)
    for block, names in names_by_block.items():
        folder = tree / block
        if not folder.is_dir():
            continue
        for child in folder.iterdir():
            if child.name.startswith(".partial-") and child.name[len(".partial-"):].rsplit("-", 1)[0] in names:
                shutil.rmtree(child, ignore_errors=True)
            elif child.name in names and not (child / CANDIDATE_FILE).is_file():
                shutil.rmtree(child, ignore_errors=True)


def prepare_tree(config: VaspPrepConfig, ctx: RunContext) -> dict[str, Any]:
    """Write this rank's share of the tree; the manifest once every candidate is there."""
    config.validate()
    tree = Path(config.out)
    started = time.perf_counter()
    plan = _plan(config, ctx)
    entries = plan["candidates"]
    mine = [e for i, e in enumerate(entries) if i % ctx.world_size == ctx.rank]
    _clean_partials(tree, mine)
    todo = [e for e in mine if not _done(tree, e)]
    written: list[str] = []
    if todo:
        structures = load_structures(config.store, [
            Choice(e["id"], e["group"], e["row"], e["e_hull"], e["energy_per_atom"], e["formula"], e["n_sites"])
            for e in todo])
        store_path = plan["source"]["path"]
        jobs = [{"tree": str(tree), "entry": e, "structure": structures[e["id"]].as_dict(), "store": store_path,
                 "kpoints_per_atom": config.kpoints_per_atom, "incar": config.incar_settings(),
                 "potcar_dir": config.potcar_dir} for e in todo]
        writer = writer_name("prep", f"r{ctx.rank}", os.getpid())
        batch = max(1, min(500, len(jobs) // (4 * config.workers) or 1))
        pool = ProcessPoolExecutor(config.workers) if config.workers > 1 else None
        try:
            for start in range(0, len(jobs), batch):
                chunk = jobs[start:start + batch]
                done = list(pool.map(_write_one, chunk, chunksize=8)) if pool else [_write_one(j) for j in chunk]
                written += done
                # log after the renames: a kill in between leaves dirs without events, read as prepped
                append_events(config.store, writer, [{"id": j["entry"]["id"], "status": "prepped",
                                                      "dir": j["entry"]["dir"]} for j in chunk], plan=plan_hash(plan))
        finally:
            if pool:
                pool.shutdown()
    if ctx.comm is not None:
        ctx.comm.Barrier()
    complete = all(_done(tree, e) for e in entries)
    if complete and (ctx.comm is None or ctx.is_main):
        manifest = {key: plan[key] for key in ("schema", "source", "config", "selection", "layout", "candidates")}
        manifest["plan_hash"] = plan_hash(plan)
        manifest["created_by"] = {"package": __version__, "git": git_revision()}
        manifest["potcar"] = "POTCAR" if config.potcar_dir else "POTCAR.spec"
        if not (tree / MANIFEST).is_file() or read_json(tree / MANIFEST) != manifest:
            write_json_atomic(tree / MANIFEST, manifest)
    elapsed = time.perf_counter() - started
    return {"tree": str(tree), "candidates": len(entries), "written_here": len(written),
            "skipped_here": len(mine) - len(todo), "complete": complete, "seconds": round(elapsed, 3),
            "selection": plan["selection"], "layout": plan["layout"]}
