"""`report all`: the page's numbers are the stage reports' numbers; the page renders in a real browser."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from stores import cscl_alcu, disguised, heusler, rock_salt, write_generated, write_screened

from matra_hpc.cli import main

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
NAN = math.nan


def _screened_rows(below_01: int, above: int) -> list[tuple[str, str, float]]:
    return ([("screened", "", 0.02)] * below_01 + [("screened", "", 0.3)] * above
            + [("failed", "relax_unconverged", NAN), ("not_screened", "not_decoded", NAN)])


@pytest.fixture(scope="module")
def inputs(held_out_store: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("inputs")
    gen = write_generated(folder / "gen.zarr", {0.7: [rock_salt(), None, disguised(heusler(), 3)],
                                                1.3: [cscl_alcu(), rock_salt(5.9)]}, run_id="m")
    screened = write_screened(folder / "screened.zarr", {0.7: _screened_rows(6, 4), 1.3: _screened_rows(2, 8)}, "m")
    baseline = write_screened(folder / "base.zarr", {0.0: _screened_rows(1, 19)}, "b")
    assert main(["eval", "recovery", "--system", "Al-Ca-Cu", "--held-out", str(held_out_store), "--generated",
                 str(gen), "--out", str(folder / "rec")]) == 0
    assert main(["eval", "conditioning", "--out", str(folder / "cond"), "--screened", f"low={screened}",
                 "--screened", f"none={baseline}"]) == 0
    return {"generated": gen, "screened": screened, "baseline": baseline, "recovery": folder / "rec" / "recovery.json",
            "conditioning": folder / "cond" / "conditioning.json"}


@pytest.fixture(scope="module")
def page(inputs: dict[str, Path], checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("page")
    args = [a for name, path in inputs.items() for a in (f"--{name}", str(path))]
    assert main(["report", "all", *args, "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    return out


def test_numbers_equal_the_stage_reports(page: Path, inputs: dict[str, Path], tmp_path: Path) -> None:
    from matra_hpc.screen.report import build_report, write_report

    report = json.loads((page / "report.json").read_text())
    assert main(["report", "generate", str(inputs["generated"]), "--out", str(tmp_path / "g")]) == 0
    assert report["generate"] == json.loads((tmp_path / "g.json").read_text())
    for key, store in (("screen", inputs["screened"]), ("baseline_screen", inputs["baseline"])):
        files = write_report(build_report(store), tmp_path / key)  # what `report screen` writes
        assert report[key] == json.loads(files.json.read_text())
    assert report["recovery"] == json.loads(inputs["recovery"].read_text())
    assert report["conditioning"] == json.loads(inputs["conditioning"].read_text())
    assert report["smact"]["model"] == report["generate"]["smact"]["generated"]
    # model: 8 of 20 candidates below 0.1 eV/atom, baseline: 1 of 20 -> 8x
    ratio = report["stable_ratio"]
    assert (ratio["numerator"]["k"], ratio["numerator"]["n"], ratio["denominator"]["k"]) == (8, 20, 1)
    assert ratio["ratio"] == pytest.approx(8.0) and ratio["low"] < 8.0 < ratio["high"]
    assert [m["n"] for m in report["ehull_distribution"]["model"]] == [10, 10]
    assert report["ehull_distribution"]["baseline"]["n"] == 20
    assert len(report["embeddings"]["elements"]) == 83 and len(report["embeddings"]["spacegroups"]) == 229
    md = (page / "report.md").read_text()
    for png in ("fig2_validity.png", "table1_funnel.png", "fig4_ehull.png", "fig3_recovery.png", "conditioning.png",
                "smact.png", "tsne_elements.png", "tsne_spacegroups.png"):
        assert (page / png).stat().st_size > 0 and f"]({png})" in md


def test_bad_inputs_exit_2(inputs: dict[str, Path], tmp_path: Path) -> None:
    assert main(["report", "all", "--generated", str(tmp_path / "nope.zarr")]) == 2
    assert main(["report", "all", "--generated", str(inputs["generated"]), "--recovery", str(tmp_path / "r.json")]) == 2


def test_page_renders_every_image_without_console_errors(page: Path) -> None:
    if not (CHROMIUM and CHROMEDRIVER):  # never a silent skip: CI must render the page
        pytest.fail("needs Debian's chromium and chromium-driver (scripts/install.sh --test installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        driver.get((page / "report.html").as_uri())
        widths = driver.execute_script("return Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        title = driver.title
    finally:
        driver.quit()
    assert title.startswith("matra-hpc")
    assert len(widths) == 8 and all(w > 0 for w in widths), widths
    assert errors == []
