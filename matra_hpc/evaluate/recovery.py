"""Chemical-system recovery (paper Fig. 3): held-out structures found by conditioned generation.

``data prepare --hold-out-system A-B-C`` keeps every structure whose element set is exactly
{A, B, C} out of the token store and records them in its attrs (``held_out``). Generation
conditioned on ``elements=A,B,C`` then samples that system; a held-out structure counts as
recovered, once, at the first sampled row that matches it. Rows are taken in the generated
store's order (temperature, shard, row), and the x axis counts every sampled row, invalid ones
included, so the curve is "recovered vs sampled" as in the paper.

Matching: pymatgen's ``StructureMatcher`` with the MatterGen tolerances (ltol 0.2, stol 0.3,
angle_tol 5 degrees; primitive cells, volumes scaled), only between structures of the same
reduced formula, so another origin, a supercell or a permuted site order still match. When the
candidates come from a screened store, each row's structure is the relaxed one where the row was
relaxed (``relaxed``), else the generated one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from matra_hpc.errors import StoreError, UsageError

LTOL, STOL, ANGLE_TOL = 0.2, 0.3, 5.0


def recovery_matcher():
    from pymatgen.analysis.structure_matcher import StructureMatcher

    return StructureMatcher(ltol=LTOL, stol=STOL, angle_tol=ANGLE_TOL, primitive_cell=True, scale=True)


def parse_system(text: str) -> tuple[str, ...]:
    """``"Al-Ca-Cu"`` -> ``("Al", "Ca", "Cu")`` (sorted, checked); UsageError on anything else."""
    from pymatgen.core.periodic_table import Element

    parts = [p.strip() for p in str(text).split("-")]
    if len(parts) < 1 or any(not p for p in parts):
        raise UsageError(f"chemical system {text!r}: expected elements joined by '-', e.g. Al-Ca-Cu")
    for p in parts:
        if not Element.is_valid_symbol(p):
            raise UsageError(f"chemical system {text!r}: {p!r} is not an element symbol")
    if len(set(parts)) != len(parts):
        raise UsageError(f"chemical system {text!r} names an element twice")
    return tuple(sorted(parts))


def system_name(elements: Iterable[str]) -> str:
    return "-".join(sorted(elements))


@dataclass
class HeldOut:
    id: str
    formula: str
    spacegroup: int
    e_above_hull: float
    structure: Any


def held_out_structures(token_store: str | Path, system: str | None = None) -> tuple[str, list[HeldOut]]:
    """The system and structures a token store kept out of training (``data prepare --hold-out-system``)."""
    from pymatgen.core import Lattice, Structure

    from matra_hpc.data.store import open_token_store

    root = open_token_store(token_store)
    info = root.attrs.get("held_out")
    if not info:
        raise StoreError(f"{token_store} holds no held-out system (prepare it with --hold-out-system A-B-C)")
    stored = system_name(parse_system(info["system"]))
    if system is not None and system_name(parse_system(system)) != stored:
        raise UsageError(f"{token_store} held out {stored}, not {system_name(parse_system(system))}")
    out = []
    for s in info["structures"]:
        structure = Structure(Lattice(s["lattice"]), s["numbers"], s["frac_coords"])
        ehull = s.get("e_above_hull")
        out.append(HeldOut(s["id"], s["formula"], int(s.get("spacegroup") or 0),
                           float("nan") if ehull is None else float(ehull), structure))
    return stored, out


def match_recovery(held_out: list[HeldOut], candidates: Iterable[tuple[str, Any]], matcher=None) -> dict[str, Any]:
    """Walk candidates ``(id, structure or None)`` in sampling order; record each first match.

    Returns ``{"n_sampled", "n_held_out", "n_recovered", "recovered": [{held_out, candidate,
    at}], "missed": [ids], "curve": [[n_sampled, n_recovered], ...]}``; ``at`` is the 1-based
    count of sampled rows when the held-out structure was first matched.
    """
    matcher = matcher or recovery_matcher()
    by_formula: dict[str, list[HeldOut]] = {}
    for h in held_out:
        by_formula.setdefault(h.structure.composition.reduced_formula, []).append(h)
    found: dict[str, dict[str, Any]] = {}
    curve = [[0, 0]]
    n = 0
    for n, (cid, structure) in enumerate(candidates, start=1):
        if structure is None:
            continue
        for h in by_formula.get(structure.composition.reduced_formula, ()):
            if h.id in found:
                continue
            if matcher.fit(h.structure, structure):
                found[h.id] = {"held_out": h.id, "formula": h.formula, "spacegroup": h.spacegroup,
                               "candidate": cid, "at": n}
                curve.append([n, len(found)])
    if curve[-1][0] != n:
        curve.append([n, len(found)])
    recovered = sorted(found.values(), key=lambda r: r["at"])
    return {"n_sampled": n, "n_held_out": len(held_out), "n_recovered": len(found), "recovered": recovered,
            "missed": [h.id for h in held_out if h.id not in found], "curve": curve}


def generated_candidates(store: str | Path) -> Iterator[tuple[str, Any]]:
    """(id, decoded structure or None) of every sampled row of a generated store, in order."""
    from matra_hpc.generate import store as gstore

    for t in gstore.store_temperatures(store):
        table = gstore.read_view(store, t)
        for r in range(len(table)):
            yield str(table.id[r]), table.row_structure(r)


def screened_candidates(store: str | Path) -> Iterator[tuple[str, Any]]:
    """(id, structure or None) of every row of a screened store, relaxed where relaxation ran."""
    from matra_hpc.screen.store import iter_rows

    for row in iter_rows(store):
        yield row.id, row.structure


def held_out_summary(held_out: list[HeldOut]) -> list[dict[str, Any]]:
    return [{"id": h.id, "formula": h.formula, "spacegroup": h.spacegroup,
             "e_above_hull": None if math.isnan(h.e_above_hull) else h.e_above_hull} for h in held_out]


def plot_recovery(result: dict[str, Any], path: Path, title: str = "") -> None:
    """Recovered held-out structures vs sampled rows (a step curve), as paper Fig. 3."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = np.asarray(result["curve"], dtype=float)
    fig, ax = plt.subplots(figsize=(5.6, 3.8), dpi=120)
    ax.step(curve[:, 0], curve[:, 1], where="post", color="tab:blue", label="recovered")
    ax.axhline(result["n_held_out"], color="gray", ls="--", lw=1, label=f"held out ({result['n_held_out']})")
    ax.set_xlabel("generated structures (sampled rows)")
    ax.set_ylabel("held-out structures recovered")
    ax.set_xlim(0, max(1, result["n_sampled"]))
    ax.set_ylim(-0.2, max(1, result["n_held_out"]) + 0.5)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title or f"{result.get('system', '')}: {result['n_recovered']} of {result['n_held_out']} "
                 f"recovered in {result['n_sampled']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
