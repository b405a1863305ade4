"""Candidate ids -> file-system-safe, sharded directories."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from matra_hpc.dft.layout import block_name, candidate_relpath, folder_layout, id_from_name, safe_name


def test_generated_ids_become_safe_reversible_names():
    cid = "gen-20261201T0000:T0.70:s3:17"
    name = safe_name(cid)
    assert ":" not in name and "/" not in name
    assert name == "gen-20261201T0000%3AT0.70%3As3%3A17"
    assert id_from_name(name) == cid
    assert safe_name("mp:mp-10") != safe_name("mp%3Amp-10")  # '%' itself is escaped: no collisions
    assert safe_name("..") not in (".", "..")


@settings(max_examples=200, derandomize=True, deadline=None)
@given(st.text(min_size=1, max_size=60))
def test_any_id_round_trips_and_is_one_path_component(cid):
    name = safe_name(cid)
    assert os.sep not in name and "\0" not in name and name not in (".", "..")
    assert len(name.encode()) <= 255
    if "~" not in name:  # not shortened ('~' itself is always escaped in an id)
        assert id_from_name(name) == cid


def test_long_ids_keep_a_hash_and_stay_under_the_name_limit():
    a, b = "x" * 300 + "a", "x" * 300 + "b"
    assert len(safe_name(a).encode()) <= 255
    assert safe_name(a) != safe_name(b)


def test_blocks_hold_at_most_1000_and_150000_fit():
    assert candidate_relpath("a:b", 0) == "b0000/a%3Ab"
    assert block_name(999) == "b0000" and block_name(1000) == "b0001"
    layout = folder_layout(150_000)
    assert layout == {"candidates": 150_000, "blocks": 150, "max_entries_per_folder": 1000}
    assert folder_layout(1_500_000)["max_entries_per_folder"] == 1500  # the top folder then grows: say so
