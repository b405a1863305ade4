"""Fixtures of the evaluation tests (the checkpoint fixture is tests/conftest.py's)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def held_out_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four crystals prepared by `data prepare`; the two of exactly Al-Ca-Cu are held out."""
    from stores import cscl_alcu, heusler, rock_salt

    from matra_hpc.cli import main

    folder = tmp_path_factory.mktemp("cifs")
    for name, structure in (("nacl", rock_salt()), ("heusler", heusler()), ("heusler-t", heusler(1.3)),
                            ("alcu", cscl_alcu())):
        structure.to(filename=str(folder / f"{name}.cif"))
    out = tmp_path_factory.mktemp("tok") / "tokens.zarr"
    assert main(["data", "prepare", f"folder:demo={folder}", "--out", str(out), "--hold-out-system", "Cu-Al-Ca"]) == 0
    return out
