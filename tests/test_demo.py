"""The README demo, end to end with small settings: every stage through the real local path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from matra_hpc.cli.demo import DemoConfig, demo_commands, run_demo


def test_demo_commands_follow_the_pipeline(tmp_path: Path) -> None:
    commands = demo_commands(DemoConfig(out=str(tmp_path)))
    assert [c[:2] for c in commands] == [
        ["data", "demo"], ["submit", "train"], ["submit", "generate"], ["report", "generate"],
        ["index", "build"], ["screen", str(tmp_path / "generated.zarr")], ["report", "screen"],
        ["baseline", "pyxtal"], ["screen", str(tmp_path / "baseline.zarr")], ["eval", "recovery"], ["report", "all"],
    ]
    assert commands[0][-2:] == ["--hold-out-system", "Cd-I"]
    assert commands[-2][commands[-2].index("--system") + 1] == "Cd-I"
    screen = commands[5]
    assert screen[screen.index("--temps") + 1] == "0.70,0.75,0.80,0.85,0.90,0.95,1.00"
    assert screen[screen.index("--limit") + 1] == str(DemoConfig().screen_limit)
    assert screen[screen.index("--reference-cache") + 1] == commands[8][commands[8].index("--reference-cache") + 1]
    # nothing to screen when no temperature is <= 1.0
    unscreened = [c[:2] for c in demo_commands(DemoConfig(out=str(tmp_path), temps="1.2,1.5"))]
    assert unscreened[3:] == [["report", "generate"], ["baseline", "pyxtal"], ["eval", "recovery"], ["report", "all"]]
    # a fixed number of optimizer steps, not minutes: the figures do not depend on machine load
    train = commands[1]
    assert train[train.index("--max-steps") + 1] == str(DemoConfig().train_steps)
    assert "--max-minutes" not in train
    assert DemoConfig().per_temp >= 64


@pytest.mark.slow
@pytest.mark.mpi
def test_demo_runs_end_to_end_and_resumes(tmp_path: Path) -> None:
    config = DemoConfig(out=str(tmp_path / "demo"), train_steps=6, per_temp=4, temps="0.7,1.2", batch_size=4,
                        baseline_n=4, recovery_n=4)
    result = run_demo(config)
    assert [s["exit_code"] for s in result["steps"]] == [0] * 11

    out = Path(config.out)
    assert (out / "train" / "loss.png").stat().st_size > 0
    report = json.loads((out / "generated.report.json").read_text())
    rows = report["temperatures"]
    assert [r["group"] for r in rows] == ["T0.70", "T1.20"]
    assert report["complete"] is True
    assert (out / "generated.report.png").stat().st_size > 0
    assert (out / "generated.report.csv").read_text().count("\n") >= 3
    screened = json.loads((out / "screened.report.json").read_text())
    assert [r["temperature"] for r in screened["temperatures"]] == [0.7]
    assert screened["temperatures"][0]["counts"]["n_generated"] == 4
    assert (out / "screened.report.png").stat().st_size > 0
    page = json.loads((out / "report" / "report.json").read_text())
    assert page["screen"] == screened and page["baseline_screen"]["total"]["n_generated"] == 4
    assert page["recovery"]["system"] == "Cd-I" and page["recovery"]["n_sampled"] == 4
    assert page["recovery"]["n_held_out"] == 9 and "stable_ratio" in page
    assert (out / "report" / "report.html").stat().st_size > 0
    assert (out / "generated.report.plausibility.png").stat().st_size > 0
    # the run and its baseline share one reference cache: no reference is relaxed twice
    relaxed = [json.loads(line)["id"] for f in (out / "references").glob("*/*.jsonl") for line in f.open()]
    assert relaxed and len(relaxed) == len(set(relaxed))
    assert not (out / "screened.zarr" / "references").exists()
    assert report["plausibility"]["generated"]["volume_per_atom"]["n"] > 0

    # A rerun resumes: the token store is reused and the finished shards are kept as they are.
    tokens_attrs = (out / "tokens.zarr" / "zarr.json").read_text()
    rerun = run_demo(config)
    assert [s["exit_code"] for s in rerun["steps"]] == [0] * 11
    assert (out / "tokens.zarr" / "zarr.json").read_text() == tokens_attrs
