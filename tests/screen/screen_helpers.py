"""Builders for the screen tests: small generated stores written with the generate stage's writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pymatgen.core import Lattice, Structure

from matra_hpc.generate import store as gstore
from matra_hpc.generate.checks import StructureCheck
from matra_hpc.generate.table import TableBuilder


def nacl(a: float = 5.6) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def silicon(a: float = 5.45) -> Structure:
    return Structure.from_spacegroup("Fd-3m", Lattice.cubic(a), ["Si"], [[0, 0, 0]])


def rattled(structure: Structure, seed: int, amount: float = 0.05) -> Structure:
    rng = np.random.default_rng(seed)
    cart = structure.cart_coords + rng.normal(0, amount, (len(structure), 3))
    return Structure(structure.lattice, structure.species, cart, coords_are_cartesian=True, to_unit_cell=True)


def check(structure: Structure | None, *, decodes: bool = True, bonds_ok: bool = True, key: str = "v1:test"
          ) -> StructureCheck:
    ok = structure is not None and decodes
    return StructureCheck(
        complete=True, decodes=ok, bonds_ok=ok and bonds_ok, spacegroup_ok=ok, sampled_spacegroup=225,
        found_spacegroup=225 if ok else 0, prototype_hash=key if ok else "",
        error="" if ok else "DecodeError: test", structure=structure if ok else None,
        formula=structure.composition.reduced_formula if ok else "", cif="", n_sites_primitive=len(structure) if ok else 0,
    )


def write_generated(path: Path, rows: dict[float, list[dict]], shards: int = 1, run_id: str = "t") -> Path:
    """A consolidated generated store: ``rows[T]`` = dicts with structure, decodes, bonds_ok, dup_train."""
    temps = sorted(rows)
    per_temp = max(len(v) for v in rows.values())
    fingerprint = {"temperatures": temps, "shards": shards, "per_temp": per_temp, "checkpoint_sha256": "test"}
    gstore.init_store(path, {"schema": gstore.SCHEMA, "run_id": run_id, "vocab_hash": "test"}, fingerprint)
    for t in temps:
        items = rows[t]
        bounds = np.linspace(0, len(items), shards + 1).astype(int)
        for s in range(shards):
            builder = TableBuilder()
            for i in range(bounds[s], bounds[s + 1]):
                row = items[i]
                builder.add(f"{run_id}:T{t:.2f}:s{s}:{i - bounds[s]}", [1, 2, 3], [np.nan] * 3,
                            # one hash per row: the generated store's own dup_run check stays out of the way
                            check(row.get("structure"), decodes=row.get("decodes", True),
                                  bonds_ok=row.get("bonds_ok", True), key=f"v1:row{t}-{i}"),
                            dup_train=row.get("dup_train", False))
            gstore.write_shard(path, t, s, builder.build(), {"rank": 0})
    gstore.consolidate(path)
    return path


def tiny_alignn(folder: Path) -> Path:
    """A small randomly initialised pure-torch ALIGNN saved the way the loader reads it (no download)."""
    import json

    import torch
    from alignn.models.alignn_atomwise_pure import ALIGNNAtomWisePure, ALIGNNAtomWisePureConfig

    config = {"name": "alignn_atomwise_pure", "alignn_layers": 1, "gcn_layers": 1, "hidden_features": 8,
              "embedding_features": 8, "edge_input_features": 8, "triplet_input_features": 8,
              "atom_input_features": 92}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    torch.save(ALIGNNAtomWisePure(ALIGNNAtomWisePureConfig(**config)).state_dict(), folder / "best_model.pt")
    return folder
