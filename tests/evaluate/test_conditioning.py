"""`eval conditioning` on constructed screened stores: the intervals and ratios are the known ones."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from stores import write_screened

from matra_hpc.cli import main

NAN = math.nan


def _rows(n_candidates: int, below_005: int, below_010: int) -> list[tuple[str, str, float]]:
    """Candidates with chosen e-hull counts, plus rows that are not candidates (never counted)."""
    e = [0.01] * below_005 + [0.07] * (below_010 - below_005) + [0.4] * (n_candidates - below_010)
    rows = [("screened", "", x) for x in e]
    rows += [("not_screened", "not_decoded", NAN), ("failed", "relax_unconverged", NAN),
             ("rejected", "disconnected", 0.0)]  # a disconnected row below the threshold is not counted
    return rows


@pytest.fixture(scope="module")
def conditioned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("cond")
    return {
        "low": write_screened(folder / "low.zarr", {1.0: _rows(10, 3, 6)}, "low"),
        "high": write_screened(folder / "high.zarr", {1.0: _rows(10, 0, 1)}, "high"),
        "none": write_screened(folder / "none.zarr", {1.0: _rows(20, 2, 6)}, "none"),
    }


def test_fractions_and_intervals_on_a_constructed_case(conditioned: dict[str, Path], tmp_path: Path) -> None:
    args = [a for label, path in conditioned.items() for a in ("--screened", f"{label}={path}")]
    assert main(["eval", "conditioning", "--out", str(tmp_path), *args]) == 0
    result = json.loads((tmp_path / "conditioning.json").read_text())
    rows = {r["label"]: r for r in result["conditions"]}
    assert result["temperature"] == 1.0 and set(rows) == {"low", "high", "none"}
    low = rows["low"]
    assert low["n_candidates"] == 10 and low["n_generated"] == 13
    # Wilson 95%: 3/10 -> [0.1078, 0.6032], 6/10 -> [0.3127, 0.8318], 0/10 -> [0, 0.2775]
    assert (low["below"]["0.050"]["low"], low["below"]["0.050"]["high"]) == pytest.approx((0.1078, 0.6032), abs=1e-4)
    assert (low["below"]["0.100"]["low"], low["below"]["0.100"]["high"]) == pytest.approx((0.3127, 0.8318), abs=1e-4)
    assert rows["high"]["below"]["0.050"]["high"] == pytest.approx(0.2775, abs=1e-4)
    assert rows["none"]["below"]["0.100"]["fraction"] == pytest.approx(6 / 20)
    ratio = result["ratio_to_unconditioned"]["low"]
    assert ratio["ratio"] == pytest.approx(2.0) and ratio["low"] < 2.0 < ratio["high"]
    for ext in ("csv", "png"):
        assert (tmp_path / f"conditioning.{ext}").stat().st_size > 0


def test_analysis_needs_a_checkpoint_or_stores(tmp_path: Path) -> None:
    assert main(["eval", "conditioning", "--out", str(tmp_path)]) == 2
    assert main(["eval", "conditioning", "--out", str(tmp_path), "--screened", "low"]) == 2
