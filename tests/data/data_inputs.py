"""Small input files in the published formats, built from real flla_2015 (Materials Project) rows."""

from __future__ import annotations

import bz2
import csv
import gzip
import json
import math
from pathlib import Path

from matra_hpc.data.demo import iter_flla


def flla_rows(n: int, skip_disordered: bool = True) -> list:
    rows = []
    for rec in iter_flla():
        if skip_disordered and not rec.structure.is_ordered:
            continue
        rows.append(rec)
        if len(rows) == n:
            break
    return rows


def cse_dict(rec, mat_key: str = "material_id") -> dict:
    """A pymatgen ComputedStructureEntry dict as the publishers write it."""
    from pymatgen.entries.computed_entries import ComputedStructureEntry

    data = {mat_key: rec.material_id, "e_above_hull": rec.properties["e_above_hull"],
            "e_form": rec.properties["e_form"]}
    entry = ComputedStructureEntry(rec.structure, energy=-1.0 * len(rec.structure), data=data,
                                   entry_id=rec.material_id)
    return entry.as_dict()


def write_mp(dest: Path, rows: list, corrupt_index: int | None = None, nan_index: int | None = None) -> Path:
    """matbench-discovery layout: pandas column table of entries + mp-energies CSV."""
    dest.mkdir(parents=True, exist_ok=True)
    ids = {str(i): r.material_id for i, r in enumerate(rows)}
    entries = {str(i): cse_dict(r) for i, r in enumerate(rows)}
    if nan_index is not None:
        entries[str(nan_index)]["structure"]["sites"][0]["abc"][0] = math.nan
    text = json.dumps({"material_id": ids, "entry": entries})
    if corrupt_index is not None:
        # Break the JSON syntax inside one record only: a dropped ':' after a key.
        marker = f'"entry_id": "{rows[corrupt_index].material_id}"'
        assert text.count(marker) == 1
        text = text.replace(marker, marker.replace('": ', '" '), 1)
    with gzip.open(dest / "2023-02-07-mp-computed-structure-entries.json.gz", "wt") as handle:
        handle.write(text)
    with gzip.open(dest / "2025-02-01-mp-energies.csv.gz", "wt", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["material_id", "formula_pretty", "formation_energy_per_atom", "energy_above_hull"])
        for r in rows:
            w.writerow([r.material_id, r.structure.composition.reduced_formula, r.properties["e_form"],
                        r.properties["e_above_hull"]])
    return dest


def write_alexandria(dest: Path, rows: list, per_file: int = 10) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for k in range(0, len(rows), per_file):
        entries = []
        for r in rows[k:k + per_file]:
            d = cse_dict(r, mat_key="mat_id")
            d["data"]["mat_id"] = "agm" + r.material_id.split("-")[1].zfill(9)
            entries.append(d)
        doc = {"@module": "pymatgen.entries.computed_entries", "@class": "list", "entries": entries}
        with bz2.open(dest / f"alexandria_{k // per_file:03d}.json.bz2", "wt") as handle:
            json.dump(doc, handle)
    return dest


def write_wbm(dest: Path, rows: list) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    with gzip.open(dest / "2022-10-19-wbm-computed-structure-entries.jsonl.gz", "wt") as handle:
        for i, r in enumerate(rows):
            handle.write(json.dumps({"material_id": f"wbm-1-{i + 1}", "formula_from_cse": r.structure.formula,
                                     "computed_structure_entry": cse_dict(r)}) + "\n")
    with gzip.open(dest / "2023-12-13-wbm-summary.csv.gz", "wt", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["material_id", "formula", "e_form_per_atom_mp2020_corrected",
                    "e_above_hull_mp2020_corrected_ppd_mp"])
        for i, r in enumerate(rows):
            w.writerow([f"wbm-1-{i + 1}", r.structure.formula, r.properties["e_form"], r.properties["e_above_hull"]])
    return dest
