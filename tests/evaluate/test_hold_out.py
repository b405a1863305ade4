"""`data prepare --hold-out-system` and `eval recovery` on small fixed stores with known answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from stores import cscl_alcu, disguised, heusler, rock_salt, write_generated

from matra_hpc.cli import main
from matra_hpc.data.store import open_token_store


def test_held_out_structures_are_recorded_and_not_trained_on(held_out_store: Path) -> None:
    root = open_token_store(held_out_store)
    ids = set(root["id"][...].tolist())
    held = root.attrs["held_out"]
    assert held["system"] == "Al-Ca-Cu"
    assert sorted(h["id"] for h in held["structures"]) == ["demo:heusler", "demo:heusler-t"]
    assert ids == {"demo:nacl", "demo:alcu"}
    report = json.loads((held_out_store / "report.json").read_text())
    assert report["filtered"]["held_out_system"]["count"] == 2


def test_recovery_counts_a_sampled_held_out_structure_once(held_out_store: Path, tmp_path: Path) -> None:
    gen = write_generated(tmp_path / "gen.zarr", {
        0.7: [None, rock_salt(), disguised(heusler(), 1)],
        1.0: [disguised(heusler(), 2), cscl_alcu(), heusler(2.0)],
    })
    out = tmp_path / "rec"
    assert main(["eval", "recovery", "--system", "Al-Ca-Cu", "--held-out", str(held_out_store),
                 "--generated", str(gen), "--out", str(out)]) == 0
    result = json.loads((out / "recovery.json").read_text())
    assert result["n_sampled"] == 6 and result["n_held_out"] == 2 and result["n_recovered"] == 1
    assert [(r["held_out"], r["at"], r["candidate"]) for r in result["recovered"]] == [
        ("demo:heusler", 3, "t:T0.70:s0:2")]
    assert result["missed"] == ["demo:heusler-t"] and not result["relaxed"]
    assert result["curve"] == [[0, 0], [3, 1], [6, 1]]
    curve = np.loadtxt(out / "recovery.csv", delimiter=",", skiprows=1)
    assert curve.tolist() == [[0, 0], [3, 1], [6, 1]]
    assert (out / "recovery.png").stat().st_size > 0


@pytest.mark.parametrize("args, message", [
    (["--system", "Al-Cu"], "held out Al-Ca-Cu"),
    (["--system", "Al-Xq"], "not an element"),
])
def test_recovery_refuses_a_wrong_system(held_out_store: Path, tmp_path: Path, args: list[str], message: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    gen = write_generated(tmp_path / "gen.zarr", {0.7: [rock_salt()]})
    code = main(["eval", "recovery", "--held-out", str(held_out_store), "--generated", str(gen),
                 "--out", str(tmp_path / "r"), *args])
    assert code == 2 and message in capsys.readouterr().err


def test_a_bad_hold_out_system_is_a_usage_error(tmp_path: Path) -> None:
    assert main(["data", "prepare", "flla", "--out", str(tmp_path / "t.zarr"), "--hold-out-system", "Al-Al"]) == 2
    assert not (tmp_path / "t.zarr").exists()


def test_recovery_samples_the_held_out_system_through_the_generate_stage(held_out_store: Path, checkpoint: Path,
                                                                          tmp_path: Path) -> None:
    from matra_hpc.generate import store as gstore

    out = tmp_path / "rec"
    assert main(["eval", "recovery", "--system", "Al-Ca-Cu", "--held-out", str(held_out_store), "--checkpoint",
                 str(checkpoint), "--n", "3", "--batch-size", "3", "--out", str(out)]) == 0
    gen = out / "generated.zarr"
    assert gstore.open_root(gen).attrs["fingerprint"]["condition"] == "elements=Al,Ca,Cu"
    table = gstore.read_view(gen, 1.0)
    for r in range(len(table)):
        if table.decodes[r]:
            assert {e.symbol for e in table.row_structure(r).composition.elements} == {"Al", "Ca", "Cu"}
    result = json.loads((out / "recovery.json").read_text())
    assert result["n_sampled"] == 3 and result["generated"] == str(gen.resolve())
