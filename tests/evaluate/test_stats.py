"""Intervals of proportions and of the model / baseline ratio: known values and coverage."""

from __future__ import annotations

import numpy as np
import pytest

from matra_hpc.evaluate.stats import proportion, ratio


def test_wilson_interval_known_values() -> None:
    # textbook values (Newcombe 1998, Table I): 0/10, 1/10 and 81/263, 95%
    assert proportion(0, 10)["low"] == 0.0
    assert proportion(0, 10)["high"] == pytest.approx(0.2775, abs=1e-4)
    assert (proportion(1, 10)["low"], proportion(1, 10)["high"]) == pytest.approx((0.0179, 0.4042), abs=1e-4)
    p = proportion(81, 263)
    assert (p["low"], p["high"]) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert proportion(10, 10)["high"] == 1.0 and proportion(0, 0)["fraction"] is None
    with pytest.raises(ValueError):
        proportion(5, 3)


def test_wilson_and_ratio_intervals_cover_the_truth() -> None:
    rng = np.random.default_rng(7)
    n1, p1, n2, p2, reps = 150, 0.30, 150, 0.06, 3000
    k1, k2 = rng.binomial(n1, p1, reps), rng.binomial(n2, p2, reps)
    hits_p = sum(proportion(k, n1)["low"] <= p1 <= proportion(k, n1)["high"] for k in k1)
    hits_r = 0
    for a, b in zip(k1, k2, strict=True):
        r = ratio(int(a), n1, int(b), n2)
        hits_r += r["low"] <= p1 / p2 <= r["high"]
    assert 0.93 <= hits_p / reps <= 0.97
    assert 0.93 <= hits_r / reps <= 0.975


def test_ratio_of_equal_fractions_is_one_and_zero_counts_are_corrected() -> None:
    r = ratio(20, 100, 10, 50)
    assert r["ratio"] == pytest.approx(1.0) and r["low"] < 1.0 < r["high"] and not r["corrected"]
    z = ratio(5, 40, 0, 64)
    assert z["corrected"] and z["ratio"] == pytest.approx((5.5 / 40.5) / (0.5 / 64.5))
    assert ratio(0, 40, 0, 64)["ratio"] is None
