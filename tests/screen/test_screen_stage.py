"""The screen stage end to end on a small generated store: statuses, reasons, novelty,
uniqueness, e-hull, resume, the status log and the Table 1 report."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from screen_helpers import nacl, rattled, silicon, tiny_alignn, write_generated

from matra_hpc.context import local_context
from matra_hpc.errors import StoreError, UsageError
from matra_hpc.screen import store as sstore
from matra_hpc.screen.config import ScreenConfig
from matra_hpc.screen.stage import run_screen


def _rows():
    nan_coords = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.5, np.nan, 0.5]])
    return {
        0.7: [
            {"structure": rattled(nacl(6.0), 1, 0.03)},  # screened, novel (stretched: it relaxes)
            {"structure": rattled(silicon(5.5), 2, 0.03)},  # screened, known crystal: not novel
            {"structure": None, "decodes": False},
            {"structure": nacl(5.5), "bonds_ok": False},
            {"structure": nacl(5.6), "dup_train": True},
            {"structure": rattled(nacl(5.6), 3, 0.03)},  # same crystal as row 0: not unique
        ],
        1.0: [
            {"structure": Structure(Lattice.cubic(1.0), ["Na"], [[0, 0, 0]])},  # 1 A cell
            {"structure": silicon(5.44)},  # a duplicate across temperatures
            {"structure": nan_coords},
            {"structure": Structure(Lattice.cubic(1000.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])},
        ],
    }


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from matra_hpc.screen.novelty import build_index

    base = tmp_path_factory.mktemp("screen")
    gen = write_generated(base / "gen.zarr", _rows(), shards=2, run_id="t")
    known = base / "known"
    known.mkdir()
    silicon().to(filename=str(known / "si.cif"))
    build_index([str(known)], base / "ref.index")
    return base, gen


def _config(base, gen, out, **kw):
    return ScreenConfig(generated=str(gen), out=str(out), relax="sevennet:0.1:40", shards=2,
                        novelty_index=str(base / "ref.index"), **kw)


def test_screen_end_to_end(inputs, sevennet):
    base, gen = inputs
    out = base / "screened.zarr"
    summary = run_screen(_config(base, gen, out), local_context())
    assert summary["complete"] and summary["rows"] == {"T0.70": 6, "T1.00": 4}
    rows = {r.id: r for r in sstore.iter_rows(out)}
    by_index = [rows[k] for k in sorted(rows, key=lambda k: (k.split(":")[1], int(k.split(":")[2][1:]),
                                                            int(k.split(":")[3])))]
    na, si, undecoded, bonds, dup_train, na_dup = by_index[:6]
    tiny, si_dup, nan_row, huge = by_index[6:]
    assert (na.status, na.reason) == ("screened", "") and na.novel and na.unique and na.connected
    assert na.structure.composition.reduced_formula == "NaCl" and len(na.structure) == 2  # primitive cell
    assert np.isfinite(na.e_hull) and "elements only" in na.e_hull_method and na.n_steps > 0
    assert si.status == "screened" and not si.novel and si.novel_match == "known/si.cif" and si.unique
    assert (undecoded.reason, bonds.reason, dup_train.reason) == (
        "not_decoded", "not_screened_bonds", "not_screened_dup_train")
    assert not na_dup.unique and na_dup.dup_of == na.id
    assert not si_dup.unique and si_dup.dup_of == si.id
    assert {tiny.reason, nan_row.reason, huge.reason} == {"bad_geometry"}
    assert all(r.status == "not_screened" for r in (undecoded, bonds, dup_train, tiny, nan_row, huge))

    status = sstore.read_status(out)
    assert set(status) == set(rows) and status[na.id]["status"] == "screened"

    # a rerun finds every shard finished and only consolidates again
    again = run_screen(_config(base, gen, out), local_context())
    assert again["tasks_done_here"] == [] and again["tasks_skipped"] == 4
    assert {r.id: (r.status, r.unique) for r in sstore.iter_rows(out)} == {
        k: (v.status, v.unique) for k, v in rows.items()}

    from matra_hpc.screen.report import build_report, write_report

    report = build_report(out)
    t07 = report["temperatures"][0]
    assert t07["temperature"] == 0.7
    assert t07["counts"] == {"n_generated": 6, "n_screened": 3, "n_relaxed": 3, "n_connected": 3, "n_novel": 2,
                             "n_unique": 1, "n_below_0.001": t07["counts"]["n_below_0.001"],
                             "n_below_0.050": t07["counts"]["n_below_0.050"],
                             "n_below_0.100": t07["counts"]["n_below_0.100"]}
    assert report["temperatures"][1]["counts"]["n_screened"] == 4
    files = write_report(report, base / "screened.report")
    assert files.png.stat().st_size > 0 and json.loads(files.json.read_text())["total"]["n_generated"] == 10


def test_bad_settings_fail_before_anything_runs(inputs):
    base, gen = inputs
    with pytest.raises(UsageError, match="weights .*missing.pth do not exist"):
        _config(base, gen, base / "x.zarr", weights=f"sevennet={base}/missing.pth").validate()
    with pytest.raises(UsageError, match="unknown potential"):
        ScreenConfig(generated=str(gen), out=str(base / "x.zarr"), relax="nope:0.1").validate()
    with pytest.raises(UsageError, match="m3gnet has no embedded weights"):
        ScreenConfig(generated=str(gen), out=str(base / "x.zarr"), relax="m3gnet:0.1").validate()
    with pytest.raises(StoreError, match="different screening"):
        run_screen(_config(base, gen, base / "screened.zarr", limit=1), local_context())


def test_limit_counts_only_relaxable_rows(inputs):
    """Rows over --max-atoms do not use up the --limit: they are planned, to be marked too_many_atoms."""
    from matra_hpc.generate import store as gstore
    from matra_hpc.screen.stage import plan_rows, screenable

    _base, gen = inputs
    temps = [0.7, 1.0]
    views = {t: gstore.read_view(gen, t) for t in temps}
    plain = plan_rows(gen, temps, limit=2)
    assert [np.flatnonzero(plain[t]).tolist() for t in temps] == [[0, 1], []]
    small = {t: screenable(v) & (v.n_sites_primitive <= 2) for t, v in views.items()}
    assert not small[0.7].any() and small[1.0].sum() >= 2  # the 8-site cells of T0.70 are too big
    capped = plan_rows(gen, temps, limit=2, max_atoms=2)
    assert np.array_equal(capped[0.7], screenable(views[0.7]))  # none counts: all planned
    last = np.flatnonzero(small[1.0])[1]
    assert np.flatnonzero(capped[1.0]).tolist() == np.flatnonzero(screenable(views[1.0])[: last + 1]).tolist()
    assert plan_rows(gen, temps, limit=0, max_atoms=2)[1.0].sum() == 0


def test_direct_ehull_is_a_second_method(tmp_path, sevennet):
    """``--ehull-direct alignn`` records the model's prediction on the relaxed structure beside the
    hull estimate; a store written before the column existed reads it as NaN."""
    from matra_hpc.screen.potentials import load_potential

    model = tiny_alignn(tmp_path / "alignn")
    gen = write_generated(tmp_path / "gen.zarr", {0.7: [{"structure": rattled(nacl(5.8), 4, 0.03)},
                                                        {"structure": None, "decodes": False}]})
    out = tmp_path / "screened.zarr"
    config = ScreenConfig(generated=str(gen), out=str(out), relax="sevennet:0.1:30", ehull_direct="alignn",
                          weights=f"alignn={model}")
    with pytest.raises(UsageError, match="alignn has no embedded weights"):
        ScreenConfig(generated=str(gen), out=str(out), ehull_direct="alignn").validate()
    run_screen(config, local_context())
    relaxed, undecoded = sorted(sstore.iter_rows(out), key=lambda r: r.id)
    assert relaxed.status == "screened" and np.isfinite(relaxed.e_hull)
    expected = load_potential("alignn", str(model)).predict(relaxed.structure)
    assert relaxed.e_hull_direct == pytest.approx(expected, abs=1e-5)
    assert relaxed.e_hull_direct != pytest.approx(relaxed.e_hull)  # its own number, not the hull's
    assert relaxed.e_hull_direct_method.startswith("alignn:") and "|direct|" in relaxed.e_hull_direct_method
    assert np.isnan(undecoded.e_hull_direct) and undecoded.e_hull_direct_method == ""
    assert sstore.open_root(out).attrs["e_hull_direct"]["model"] == "alignn"

    import shutil

    for name in ("e_hull_direct", "e_hull_direct_method"):
        shutil.rmtree(out / "T0.70" / name)
    old = sorted(sstore.iter_rows(out), key=lambda r: r.id)[0]
    assert np.isnan(old.e_hull_direct) and old.e_hull_direct_method == "" and old.e_hull == relaxed.e_hull


def test_element_the_potential_lacks_is_a_reason_not_a_crash(tmp_path, sevennet):
    """A candidate with hassium: no hull reference is relaxed for its system, the shard finishes."""
    hs = Structure(Lattice.cubic(3.2), ["Hs", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    gen = write_generated(tmp_path / "gen.zarr", {0.7: [{"structure": hs}]})
    out = tmp_path / "screened.zarr"
    result = run_screen(ScreenConfig(generated=str(gen), out=str(out), relax="sevennet:0.1:5"), local_context())
    assert result["references_relaxed_here"] == 0
    [row] = list(sstore.iter_rows(out))
    assert (row.status, row.reason) == ("not_screened", "unsupported_element")


def test_threads_setting_reaches_torch(tmp_path):
    import torch

    hs = Structure(Lattice.cubic(3.2), ["Hs", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    gen = write_generated(tmp_path / "gen.zarr", {0.7: [{"structure": hs}]})
    with pytest.raises(UsageError, match="--threads"):
        ScreenConfig(generated=str(gen), out=str(tmp_path / "x.zarr"), threads=0).validate()
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run_screen(ScreenConfig(generated=str(gen), out=str(tmp_path / "s.zarr"), relax="sevennet:0.1:5", threads=1),
                   local_context())
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
