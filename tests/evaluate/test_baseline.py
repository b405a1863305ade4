"""The PyXtal baseline: charge-balanced, symmetric, a generated store like any run, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from matra_hpc.cli import main
from matra_hpc.evaluate.baseline import baseline_shard, is_charge_balanced
from matra_hpc.evaluate.config import BaselineConfig
from matra_hpc.generate import store as gstore

ARGS = ["--n", "6", "--shards", "2", "--seed", "3", "--run-id", "base"]


@pytest.fixture(scope="module")
def baseline_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("baseline") / "base.zarr"
    assert main(["baseline", "pyxtal", "--out", str(out), *ARGS]) == 0
    return out


def _wyckoff_sites(tokens: np.ndarray) -> int:
    from matra_hpc.tokens import load_vocab

    vocab = load_vocab()
    return sum(1 for t in tokens if vocab.kind(int(t)) == "wyckoff")


def test_baseline_is_a_charge_balanced_generated_store(baseline_store: Path) -> None:
    from pymatgen.core import Composition

    root = gstore.open_root(baseline_store)  # the generated-store reader accepts it
    assert root.attrs["baseline"]["method"] == "pyxtal" and root.attrs["checkpoint"] is None
    assert gstore.store_temperatures(baseline_store) == [0.0]
    table = gstore.read_view(baseline_store, 0.0)
    assert len(table) == 6
    assert sorted(table.id) == sorted(f"base:pyxtal:s{s}:{i}" for s in (0, 1) for i in range(3))
    assert table.decodes.all() and table.complete.all()
    for r in range(len(table)):
        structure = table.row_structure(r)
        amounts = Composition(table.formula[r]).get_el_amt_dict()
        assert 2 <= len(amounts) <= 3
        assert is_charge_balanced(list(amounts), [int(round(v)) for v in amounts.values()]), table.formula[r]
        assert structure.composition.reduced_formula == table.formula[r]
        assert 2 <= table.sampled_spacegroup[r] <= 230
        assert _wyckoff_sites(table.row_tokens(r)[0]) <= 15
    manifest = gstore.read_manifest(baseline_store, 0.0, 0)
    assert manifest["draws"]["attempts"] >= 3 and len(manifest["drawn_spacegroups"]) == 3


def test_charge_balance_check_refuses_an_unbalanced_formula() -> None:
    assert is_charge_balanced(["Na", "Cl"], [1, 1])
    assert is_charge_balanced(["Al", "O"], [2, 3])
    assert not is_charge_balanced(["Na", "Cl"], [1, 2])


def test_report_generate_reads_the_baseline(baseline_store: Path, tmp_path: Path) -> None:
    assert main(["report", "generate", str(baseline_store), "--out", str(tmp_path / "r")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    (row,) = report["temperatures"]
    assert row["group"] == "T0.00" and row["rows"] == 6 and row["valid"] == 6
    assert report["smact"]["generated"]["n"] == 6
    assert (tmp_path / "r.png").stat().st_size > 0


def test_shards_are_deterministic_and_a_rerun_changes_nothing(baseline_store: Path, tmp_path: Path) -> None:
    before = gstore.read_view(baseline_store, 0.0)
    again, _ = baseline_shard(BaselineConfig(out="unused", n=6, shards=2, seed=3), "base", 1)
    stored = gstore.read_shard(baseline_store, 0.0, 1)
    assert list(again.id) == list(stored.id)
    np.testing.assert_array_equal(again.tokens, stored.tokens)
    assert main(["baseline", "pyxtal", "--out", str(baseline_store), *ARGS]) == 0
    after = gstore.read_view(baseline_store, 0.0)
    assert list(after.id) == list(before.id)
    np.testing.assert_array_equal(after.values, before.values)


def test_another_setting_refuses_to_resume(baseline_store: Path) -> None:
    args = [a if a != "3" else "4" for a in ARGS]  # another seed
    assert main(["baseline", "pyxtal", "--out", str(baseline_store), *args]) == 1


@pytest.mark.parametrize("args", [["--n", "0"], ["--n", "4", "--shards", "5"], ["--min-elements", "1"],
                                  ["--max-elements", "9"]])
def test_bad_settings_exit_2(args: list[str], tmp_path: Path) -> None:
    assert main(["baseline", "pyxtal", "--out", str(tmp_path / "b.zarr"), *args]) == 2
    assert not (tmp_path / "b.zarr").exists()


@pytest.mark.mpi
def test_submit_runs_two_mpi_ranks_and_writes_the_same_rows(baseline_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "base.zarr"
    code = main(["submit", "baseline-pyxtal", "--cluster", "local", "--run-dir", str(tmp_path / "run"),
                 "--out", str(out), *ARGS])
    assert code == 0
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["kind"] == "mpi"
    ranks = {gstore.read_manifest(out, 0.0, s)["rank"] for s in (0, 1)}
    assert ranks <= {0, 1}
    mine, ref = gstore.read_view(out, 0.0), gstore.read_view(baseline_store, 0.0)
    assert list(mine.id) == list(ref.id)
    np.testing.assert_array_equal(mine.tokens, ref.tokens)


def test_systems_from_a_run_keep_the_baseline_in_its_chemistries(tmp_path: Path) -> None:
    from pymatgen.core import Composition
    from stores import cscl_alcu, rock_salt, write_generated

    gen = write_generated(tmp_path / "gen.zarr", {0.7: [rock_salt(), None, cscl_alcu()]})
    out = tmp_path / "base.zarr"
    assert main(["baseline", "pyxtal", "--out", str(out), "--n", "2", "--systems-from", str(gen)]) == 0
    table = gstore.read_view(out, 0.0)
    # Al-Cu has no charge-neutral combination of oxidation states: only Na-Cl can be drawn
    assert {frozenset(Composition(f).get_el_amt_dict()) for f in table.formula} == {frozenset({"Na", "Cl"})}
    assert gstore.open_root(out).attrs["baseline"]["systems_from"] == str(gen.resolve())


def test_a_run_without_usable_systems_falls_back_to_random_elements(tmp_path: Path) -> None:
    from stores import cscl_alcu, write_generated

    gen = write_generated(tmp_path / "gen.zarr", {0.7: [None, cscl_alcu()]})  # only an intermetallic
    out = tmp_path / "base.zarr"
    assert main(["baseline", "pyxtal", "--out", str(out), "--n", "1", "--systems-from", str(gen)]) == 0
    assert gstore.read_manifest(out, 0.0, 0)["systems"] == 0 and len(gstore.read_view(out, 0.0)) == 1
