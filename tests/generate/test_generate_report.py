"""`report generate`: the Fig. 2 table counts cut rows as invalid, and writes JSON, CSV and PNG."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from generate_helpers import FINGERPRINT, build_table, rock_salt

from matra_hpc.cli import main
from matra_hpc.generate import store as gstore
from matra_hpc.generate.report import build_report


def _store(tmp_path: Path) -> Path:
    out = tmp_path / "gen.zarr"
    gstore.init_store(out, {"schema": gstore.SCHEMA, "run_id": "r1"}, FINGERPRINT)
    gstore.write_shard(out, 0.7, 0, build_table([(rock_salt(5.6), "h1"), (rock_salt(5.6), "h1")], "a"), {})
    gstore.write_shard(out, 0.7, 1, build_table([(None, ""), (rock_salt(5.0), "h3")], "b"), {})
    gstore.write_shard(out, 1.0, 0, build_table([(None, ""), (None, "")], "c"), {})
    return out


def test_report_counts(tmp_path: Path) -> None:
    report = build_report(_store(tmp_path))  # consolidates on the way
    t07, t10 = report["temperatures"]
    assert t07["rows"] == 4 and t07["length_cut"] == 1 and t07["valid"] == 3
    assert t07["dup_run"] == 1 and t07["novel_unique"] == 2
    assert t07["frac_valid"] == pytest.approx(0.75)
    assert t10["rows"] == 2 and t10["valid"] == 0 and t10["frac_novel_unique"] == 0
    assert t10["shards_done"] == 1 and not report["complete"]


def test_report_cli_writes_json_csv_png_side_by_side(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _store(tmp_path)
    assert main(["report", "generate", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "T" in printed.splitlines()[0] and "incomplete" in printed
    data = json.loads((tmp_path / "gen.report.json").read_text())
    assert [r["group"] for r in data["temperatures"]] == ["T0.70", "T1.00"]
    rows = list(csv.DictReader(open(tmp_path / "gen.report.csv")))
    assert rows[0]["valid"] == "3" and rows[0]["frac_valid"] == "0.7500"
    assert (tmp_path / "gen.report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_of_a_missing_store_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "generate", str(tmp_path / "nope.zarr")]) == 1
    assert "not a Zarr store" in capsys.readouterr().err


def test_a_temperature_without_finished_shards_reports_no_fractions(tmp_path: Path) -> None:
    out = tmp_path / "gen.zarr"
    gstore.init_store(out, {"schema": gstore.SCHEMA, "run_id": "r1"}, FINGERPRINT)
    gstore.write_shard(out, 0.7, 0, build_table([(rock_salt(5.6), "h1")], "a"), {"seconds": 2.0})
    assert main(["report", "generate", str(out)]) == 0
    text = (tmp_path / "gen.report.json").read_text()
    assert "NaN" not in text
    t07, t10 = json.loads(text)["temperatures"]
    assert t07["rows_per_task_second"] == 0.5 and t10["rows"] == 0 and t10["frac_valid"] is None


def test_plausibility_section_measures_volume_distances_and_value_errors(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "meta.json").write_text(json.dumps({"step": 7, "val": {
        "mae_coordinate": 0.1, "base_mae_coordinate": 0.2, "mae_length": 1.0, "base_mae_length": 4.0}}))
    out = tmp_path / "gen.zarr"
    gstore.init_store(out, {"schema": gstore.SCHEMA, "run_id": "r1", "checkpoint": {"resolved": str(ckpt)}},
                      FINGERPRINT)
    gstore.write_shard(out, 0.7, 0, build_table([(rock_salt(5.6), "h1"), (rock_salt(5.0), "h2")], "a"), {})
    section = build_report(out)["plausibility"]
    # rock salt: 8 atoms in a^3, Na-Cl at a/2, Na-Na and Cl-Cl at a/sqrt(2)
    vpa = section["generated"]["volume_per_atom"]
    assert vpa["n"] == 2 and vpa["median"] == pytest.approx((5.6**3 / 8 + 5.0**3 / 8) / 2, rel=1e-3)
    pairs = {p["pair"]: p["generated"]["median"] for p in section["pairs"]}
    assert pairs["Na-Cl"] == pytest.approx((2.8 + 2.5) / 2, rel=1e-3)
    assert pairs["Na-Na"] == pytest.approx(5.3 / 2**0.5, rel=1e-3)
    assert section["train"] is None  # the store names no training store
    errors = section["value_errors"]
    assert errors["step"] == 7 and errors["kinds"]["length"] == {"mae": 1.0, "mean_predictor_mae": 4.0,
                                                                  "value_loss": None}
    assert main(["report", "generate", str(out)]) == 0
    assert (tmp_path / "gen.report.plausibility.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "_plot" not in json.loads((tmp_path / "gen.report.json").read_text())["plausibility"]
