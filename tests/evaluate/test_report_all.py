"""`report all`: the page's numbers are the stage reports' numbers; the page renders in a real browser."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from matra_hpc.cli import main

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def small_baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("base") / "base.zarr"
    assert main(["baseline", "pyxtal", "--out", str(out), "--n", "3", "--seed", "2", "--run-id", "b"]) == 0
    return out


@pytest.fixture(scope="module")
def page(generated_store: Path, small_baseline: Path, checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("page")
    assert main(["report", "all", "--generated", str(generated_store), "--baseline", str(small_baseline),
                 "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    return out


def test_numbers_equal_the_stage_reports(page: Path, generated_store: Path, small_baseline: Path, tmp_path: Path) -> None:
    report = json.loads((page / "report.json").read_text())
    assert main(["report", "generate", str(generated_store), "--out", str(tmp_path / "g")]) == 0
    assert main(["report", "generate", str(small_baseline), "--out", str(tmp_path / "b")]) == 0
    assert report["generate"] == json.loads((tmp_path / "g.json").read_text())
    assert report["baseline_generate"] == json.loads((tmp_path / "b.json").read_text())
    assert report["smact"]["model"] == report["generate"]["smact"]["generated"]
    assert len(report["embeddings"]["elements"]) == 83 and len(report["embeddings"]["spacegroups"]) == 229
    md = (page / "report.md").read_text()
    for png in ("fig2_validity.png", "smact.png", "tsne_elements.png", "tsne_spacegroups.png"):
        assert (page / png).stat().st_size > 0 and f"]({png})" in md


def test_bad_inputs_exit_2(generated_store: Path, tmp_path: Path) -> None:
    assert main(["report", "all", "--generated", str(tmp_path / "nope.zarr")]) == 2
    assert main(["report", "all", "--generated", str(generated_store), "--recovery", str(tmp_path / "r.json")]) == 2


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
    assert len(widths) >= 4 and all(w > 0 for w in widths), widths
    assert errors == []
