"""Helpers of the DFT tests: screened stores in contract J's schema, built with the screen stage's writer."""

from __future__ import annotations

import gzip
import math
from pathlib import Path
from typing import Any

FILES = Path(__file__).resolve().parent / "files"


class KnownDuplicates:
    """The uniqueness index consolidate asks: the given ids duplicate an earlier candidate."""

    def __init__(self, duplicates: set[str]) -> None:
        self.duplicates = duplicates

    def first_seen(self, candidate_id: str, structure: Any) -> str | None:
        return "earlier-candidate" if candidate_id in self.duplicates else None


def build_screened_store(path: Path, rows: list[dict[str, Any]], run_id: str = "gen-test") -> Path:
    """A consolidated screened store; each row: structure, e_hull, temperature and optional flags.

    Rows keep their order within a temperature; ids are ``<run_id>:T<t>:s0:<i>``.
    """
    from matra_hpc.screen.store import RowBuilder, consolidate, init_store, write_shard

    temps = sorted({round(float(r.get("temperature", 0.7)), 2) for r in rows})
    init_store(path, {"schema": "matra-hpc/screened/1", "run_id": run_id, "temperatures": temps, "shards": 1},
               {"test": run_id}, temps)
    duplicates: set[str] = set()
    for t in temps:
        builder = RowBuilder()
        mine = [r for r in rows if round(float(r.get("temperature", 0.7)), 2) == t]
        for i, r in enumerate(mine):
            status = r.get("status", "screened")
            reason = r.get("reason", "" if status == "screened" else "disconnected")
            structure = r.get("structure")
            e_hull = r.get("e_hull", 0.0)
            cid = r.get("id", f"{run_id}:T{t:.2f}:s0:{i}")
            if not r.get("unique", True):
                duplicates.add(cid)
            builder.add(
                id=cid, status=status, reason=reason, structure=structure,
                relaxed=r.get("relaxed", structure is not None), e_hull=e_hull,
                energy_per_atom=r.get("energy_per_atom", -5.0), connected=r.get("connected", True),
                novel=r.get("novel", True), unique=r.get("unique", True), potential="test",
                e_hull_method="test" if math.isfinite(e_hull) else "",
            )
        write_shard(path, t, 0, builder.build(), {"test": True})
    consolidate(path, uniqueness=KnownDuplicates(duplicates))
    return path


def fixture_structure(name: str):
    """The initial structure of a recorded run in tests/dft/files (its vasprun.xml.gz)."""
    from pymatgen.io.vasp.outputs import Vasprun

    return Vasprun(str(FILES / name), parse_dos=False, parse_eigen=False, parse_potcar_file=False).initial_structure


def gunzip_to(src: Path, dest: Path) -> None:
    with gzip.open(src, "rb") as fin:
        dest.write_bytes(fin.read())
