"""Which screened candidates go to VASP: the lowest ML e-hull over all temperatures.

Reads the consolidated columns of the screened store (contract J) as arrays and builds pymatgen
structures only for the chosen rows, so choosing 150,000 of 3 million stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from matra_hpc.dft.config import VaspPrepConfig
from matra_hpc.errors import StoreError


@dataclass(frozen=True)
class Choice:
    """One selected candidate: where it comes from and its ML estimate."""

    id: str
    group: str  # temperature group of the screened store, e.g. "T0.70"
    row: int  # row in that group's consolidated view
    e_hull: float
    energy_per_atom: float
    formula: str
    n_sites: int


def select_candidates(store: str, config: VaspPrepConfig) -> tuple[list[Choice], dict[str, Any]]:
    """The chosen candidates in rank order (lowest e_hull first) and a summary of the choice."""
    from matra_hpc.screen.store import read_view, store_temperatures

    pool: list[tuple[Any, ...]] = []
    eligible: dict[str, int] = {}
    for temperature in store_temperatures(store):
        group = f"T{temperature:.2f}"
        data = read_view(store, temperature)
        mask = (np.asarray(data["status"], dtype=object) == "screened") & np.isfinite(data["e_hull"])
        for name in config.filters:
            mask &= np.asarray(data[name], dtype=bool)
        rows = np.flatnonzero(mask)
        eligible[group] = int(rows.size)
        sites = np.diff(data["site_offsets"])
        for r in rows:
            pool.append((float(data["e_hull"][r]), _tie_key(config.tie_break, data, r, sites), str(data["id"][r]),
                         group, int(r), float(data["energy_per_atom"][r]), str(data["formula"][r]), int(sites[r])))
    pool.sort(key=lambda item: (item[0], item[1], item[2]))
    taken: dict[str, int] = {}
    chosen: list[Choice] = []
    seen: set[str] = set()
    for e_hull, _tie, cid, group, row, energy, formula, n_sites in pool:
        if len(chosen) >= config.top:
            break
        cap = config.per_temperature.get(group)
        if cap is not None and taken.get(group, 0) >= cap:
            continue
        if cid in seen:
            raise StoreError(f"{store}: candidate id {cid} appears twice")
        seen.add(cid)
        taken[group] = taken.get(group, 0) + 1
        chosen.append(Choice(cid, group, row, e_hull, energy, formula, n_sites))
    summary = {
        "eligible": eligible,
        "eligible_total": sum(eligible.values()),
        "selected": len(chosen),
        "selected_per_temperature": dict(sorted(taken.items())),
        "e_hull_range": [chosen[0].e_hull, chosen[-1].e_hull] if chosen else None,
    }
    return chosen, summary


def _tie_key(tie_break: str, data: dict[str, np.ndarray], r: int, sites: np.ndarray) -> Any:
    if tie_break == "n_sites":
        return int(sites[r])
    if tie_break == "energy_per_atom":
        value = float(data["energy_per_atom"][r])
        return value if np.isfinite(value) else float("inf")
    return ""  # "id": the id itself is the last key of the sort


def load_structures(store: str, choices: list[Choice]) -> dict[str, Any]:
    """id -> relaxed pymatgen Structure for the chosen rows (one view read per group)."""
    from pymatgen.core import Lattice, Structure

    from matra_hpc.screen.store import read_view

    by_group: dict[str, list[Choice]] = {}
    for choice in choices:
        by_group.setdefault(choice.group, []).append(choice)
    out: dict[str, Any] = {}
    for group, items in by_group.items():
        data = read_view(store, float(group[1:]))
        offsets = data["site_offsets"]
        for choice in items:
            r = choice.row
            if str(data["id"][r]) != choice.id:
                raise StoreError(f"{store}/{group} row {r} is {data['id'][r]}, expected {choice.id}: "
                                 "the screened store changed since vasp-prep planned")
            a, b = int(offsets[r]), int(offsets[r + 1])
            lattice = np.asarray(data["lattice"][r], dtype=float)
            if b == a or not np.all(np.isfinite(lattice)):
                raise StoreError(f"{store}/{group} row {r} ({choice.id}) has no structure")
            out[choice.id] = Structure(Lattice(lattice), np.asarray(data["numbers"][a:b], dtype=int),
                                       np.asarray(data["frac_coords"][a:b], dtype=float))
    return out
