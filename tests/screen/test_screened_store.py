"""The screened store round trip: write shards, consolidate, read rows and the status log."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure

from matra_hpc.errors import StoreError
from matra_hpc.screen import store as sstore


class MatcherUniqueness:
    """First-seen by StructureMatcher over every earlier structure (the run index's contract)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Structure]] = []
        self.matcher = StructureMatcher()

    def first_seen(self, candidate_id: str, structure: Structure) -> str | None:
        for other_id, other in self.seen:
            if self.matcher.fit(structure, other):
                return other_id
        self.seen.append((candidate_id, structure))
        return None


def _nacl(a: float = 5.6) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def _write(tmp_path, shards: int = 2):
    out = tmp_path / "screened.zarr"
    attrs = {"schema": sstore.SCHEMA, "run_id": "r1", "temperatures": [0.7], "shards": shards}
    sstore.init_store(out, attrs, {"generated": "x", "shards": shards}, [0.7])
    b0 = sstore.RowBuilder()
    b0.add(id="r1:T0.70:s0:0", status="screened", structure=_nacl(), relaxed=True, energy_per_atom=-3.5,
           e_hull=0.01, e_hull_method="m", connected=True, n_components=1, novel=True, n_steps=12,
           max_force=0.01, volume_change=0.02, potential="sevennet:0.05")
    b0.add(id="r1:T0.70:s0:1", status="not_screened", reason="not_decoded")
    sstore.write_shard(out, 0.7, 0, b0.build(), {"rank": 0})
    b1 = sstore.RowBuilder()
    # the same crystal, scaled: a run duplicate of row s0:0
    b1.add(id="r1:T0.70:s1:0", status="screened", structure=_nacl(5.61), relaxed=True, energy_per_atom=-3.5,
           e_hull=0.012, e_hull_method="m", connected=True, n_components=1, novel=True)
    b1.add(id="r1:T0.70:s1:1", status="failed", reason="relax_unconverged",
           structure=Structure(Lattice.cubic(3.0), ["Cu"], [[0, 0, 0]]), relaxed=True)
    if shards > 1:
        sstore.write_shard(out, 0.7, 1, b1.build(), {"rank": 1})
    return out


def test_round_trip_rows_uniqueness_and_status(tmp_path):
    out = _write(tmp_path)
    summary = sstore.consolidate(out, uniqueness=MatcherUniqueness())
    assert summary["complete"] and summary["rows"] == {"T0.70": 4}
    rows = list(sstore.iter_rows(out))
    assert [r.id for r in rows] == ["r1:T0.70:s0:0", "r1:T0.70:s0:1", "r1:T0.70:s1:0", "r1:T0.70:s1:1"]
    first, undecoded, dup, failed = rows
    assert first.unique and first.is_candidate and first.temperature == 0.7
    assert first.structure.composition.reduced_formula == "NaCl" and len(first.structure) == 8
    assert first.e_hull == pytest.approx(0.01) and first.n_steps == 12
    assert undecoded.structure is None and undecoded.reason == "not_decoded" and not undecoded.unique
    assert not dup.unique and dup.dup_of == first.id and not dup.is_candidate
    assert failed.status == "failed" and not failed.unique  # failed rows take no part in uniqueness
    assert [r.id for r in sstore.iter_rows(out, status="screened")] == [first.id, dup.id]

    status = sstore.read_status(out)
    assert status[first.id]["status"] == "screened" and status[undecoded.id]["reason"] == "not_decoded"
    sstore.append_status(out, "dft-rank0", [{"id": first.id, "stage": "dft", "status": "prepped"}])
    # a later stage's event wins; a torn line from a killed writer is skipped
    with open(out / "status" / "dft-rank0.jsonl", "a") as fh:
        fh.write('{"id": "r1:T0.70:s0:1", "sta')
    status = sstore.read_status(out)
    assert status[first.id]["status"] == "prepped" and status[undecoded.id]["stage"] == "screen"
    # consolidate again (idempotent) and the DFT file is untouched
    sstore.consolidate(out, uniqueness=MatcherUniqueness())
    assert sstore.read_status(out)[first.id]["status"] == "prepped"
    lines = (out / "status" / "screen.jsonl").read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[0])["stage"] == "screen"


def test_unfinished_view_and_bad_inputs(tmp_path):
    out = _write(tmp_path, shards=2)
    with pytest.raises(StoreError, match="no consolidated view"):
        list(sstore.iter_rows(out))
    with pytest.raises(StoreError, match="different screening"):
        sstore.init_store(out, {}, {"generated": "y", "shards": 2}, [0.7])
    with pytest.raises(ValueError, match="closed list"):
        sstore.RowBuilder().add(id="x", status="screened", reason="disconnected")
    with pytest.raises(StoreError, match="schema"):
        sstore.open_root(out / "T0.70")
    with pytest.raises(ValueError):
        sstore.append_status(out, "screen", [{"id": "x", "stage": "dft", "status": "prepped"}])
    assert np.isnan(sstore.read_shard(out, 0.7, 0)["e_hull"][1])
