"""The generated store: atomic shards, leftovers of a killed writer, consolidate and dup_run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from generate_helpers import FINGERPRINT, build_table, rock_salt
from pymatgen.core import Lattice, Structure

from matra_hpc.errors import StoreError
from matra_hpc.generate import store as gstore


def _new_store(tmp_path: Path) -> Path:
    out = tmp_path / "gen.zarr"
    gstore.init_store(out, {"schema": gstore.SCHEMA, "run_id": "r1"}, FINGERPRINT)
    return out


def test_table_round_trip_keeps_ragged_rows(tmp_path: Path) -> None:
    out = _new_store(tmp_path)
    table = build_table([(rock_salt(5.6), "h1"), (None, ""), (rock_salt(5.7), "h1")], "r1:T0.70:s0")
    assert gstore.write_shard(out, 0.7, 0, table, {"rank": 0})
    back = gstore.read_shard(out, 0.7, 0)
    assert list(back.id) == ["r1:T0.70:s0:0", "r1:T0.70:s0:1", "r1:T0.70:s0:2"]
    assert back.offsets.tolist() == [0, 3, 7, 12]
    assert back.row_tokens(1)[0].tolist() == [0, 1, 2, 3]
    assert back.site_offsets.tolist() == [0, 8, 8, 16]
    assert np.isnan(back.lattice[1]).all()
    assert back.row_structure(1) is None
    assert back.row_structure(2).lattice.a == pytest.approx(5.7)
    assert back.complete.tolist() == [True, False, True]
    assert gstore.read_manifest(out, 0.7, 0)["rows"] == 3


def test_second_commit_of_a_shard_is_discarded(tmp_path: Path) -> None:
    out = _new_store(tmp_path)
    assert gstore.write_shard(out, 0.7, 1, build_table([(rock_salt(5.6), "h")], "a"), {})
    assert not gstore.write_shard(out, 0.7, 1, build_table([(rock_salt(5.6), "h")], "b"), {})
    assert list(gstore.read_shard(out, 0.7, 1).id) == ["a:0"]
    assert not [p for p in (out / "T0.70" / "shards").iterdir() if p.name.startswith(".partial")]


def test_reopen_removes_killed_writers_leftovers_and_checks_fingerprint(tmp_path: Path) -> None:
    out = _new_store(tmp_path)
    gstore.write_shard(out, 0.7, 0, build_table([(rock_salt(5.6), "h")], "a"), {})
    shards = out / "T0.70" / "shards"
    (shards / ".partial-s1-dead").mkdir()
    (shards / "s1").mkdir()  # renamed but... no manifest: must be redone
    attrs = gstore.init_store(out, {"schema": gstore.SCHEMA, "run_id": "other"}, FINGERPRINT)
    assert attrs["run_id"] == "r1"  # resume keeps the run id
    assert sorted(p.name for p in shards.iterdir()) == ["s0", "zarr.json"]
    assert gstore.finished_shards(out, 0.7) == [0]
    with pytest.raises(StoreError, match="per_temp"):
        gstore.init_store(out, {"schema": gstore.SCHEMA}, {**FINGERPRINT, "per_temp": 5})


def test_open_refuses_other_schemas(tmp_path: Path) -> None:
    import zarr

    zarr.open_group(str(tmp_path / "t.zarr"), mode="w").attrs["schema"] = "matra-hpc/tokens/1"
    with pytest.raises(StoreError, match="schema"):
        gstore.open_root(tmp_path / "t.zarr")
    with pytest.raises(StoreError):
        gstore.open_root(tmp_path / "missing.zarr")


def test_consolidate_marks_run_duplicates_in_order_and_is_idempotent(tmp_path: Path) -> None:
    out = _new_store(tmp_path)
    # Same hash, same structure up to a small strain -> duplicate; same hash, other structure -> not.
    gstore.write_shard(out, 0.7, 0, build_table([(rock_salt(5.6), "h1"), (rock_salt(5.61), "h1")], "a"), {})
    other = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    gstore.write_shard(out, 0.7, 1, build_table([(other, "h1"), (None, "")], "b"), {})
    gstore.write_shard(out, 1.0, 1, build_table([(rock_salt(5.5), "h1")], "c"), {})
    first = gstore.consolidate(out)
    assert not first.complete  # T1.00 shard 0 is missing
    assert first.rows == {"T0.70": 4, "T1.00": 1}
    view = gstore.read_view(out, 0.7)
    assert list(view.id) == ["a:0", "a:1", "b:0", "b:1"]
    assert view.dup_run.tolist() == [False, True, False, False]
    assert gstore.read_view(out, 1.0).dup_run.tolist() == [True]  # matches a row of an earlier temperature
    assert gstore.view_is_current(out, 0.7)
    gstore.write_shard(out, 1.0, 0, build_table([(rock_salt(5.6), "h2")], "d"), {})
    assert not gstore.view_is_current(out, 1.0)
    second = gstore.consolidate(out)
    assert second.complete and second.rows == {"T0.70": 4, "T1.00": 2}
    assert list(gstore.read_view(out, 1.0).id) == ["d:0", "c:0"]
    assert gstore.read_view(out, 0.7).dup_run.tolist() == [False, True, False, False]


def test_task_claims_are_exclusive(tmp_path: Path) -> None:
    out = _new_store(tmp_path)
    a = gstore.TaskClaims(out, "attempt1")
    b = gstore.TaskClaims(out, "attempt1")
    assert a.claim(3) and not b.claim(3) and b.claim(4)
    assert gstore.TaskClaims(out, "attempt2").claim(3)
