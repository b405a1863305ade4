"""Proportions with 95% intervals, and the ratio of two proportions (model / baseline).

- ``proportion(k, n)``: Wilson score interval. It stays inside [0, 1] and keeps close to its
  nominal coverage for the small counts of a demo (0 of 40 stable is an interval, not a point),
  where the normal (Wald) interval collapses.
- ``ratio(k1, n1, k2, n2)``: the ratio of the two fractions with the Katz log interval
  (``log r +- z * sqrt(1/k1 - 1/n1 + 1/k2 - 1/n2)``). When a count is 0 (or equals its n) the
  log is undefined, so 0.5 is added to every count and n (the usual Haldane-Anscombe
  correction) and the result says ``corrected``; when both fractions are 0 the ratio is None.
"""

from __future__ import annotations

import math
from typing import Any

Z95 = 1.959963984540054
"""Two-sided 95% quantile of the standard normal."""


def proportion(k: int, n: int, z: float = Z95) -> dict[str, Any]:
    """``{"k", "n", "fraction", "low", "high"}``; the fraction and bounds are None when n = 0."""
    k, n = int(k), int(n)
    if n < 0 or not 0 <= k <= max(n, 0):
        raise ValueError(f"bad counts: {k} of {n}")
    if n == 0:
        return {"k": k, "n": n, "fraction": None, "low": None, "high": None}
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # exact ends at k = 0 and k = n (the formula gives them up to rounding)
    low = 0.0 if k == 0 else max(0.0, center - half)
    high = 1.0 if k == n else min(1.0, center + half)
    return {"k": k, "n": n, "fraction": p, "low": low, "high": high}


def ratio(k1: int, n1: int, k2: int, n2: int, z: float = Z95) -> dict[str, Any]:
    """(k1/n1) / (k2/n2) with its Katz log interval; None values when it is undefined."""
    out: dict[str, Any] = {"numerator": proportion(k1, n1), "denominator": proportion(k2, n2),
                           "ratio": None, "low": None, "high": None, "corrected": False}
    if n1 == 0 or n2 == 0 or (k1 == 0 and k2 == 0):
        return out
    a, b, c, d = float(k1), float(n1), float(k2), float(n2)
    if k1 in (0, n1) or k2 in (0, n2):
        a, b, c, d = a + 0.5, b + 0.5, c + 0.5, d + 0.5
        out["corrected"] = True
    r = (a / b) / (c / d)
    se = math.sqrt(max(1 / a - 1 / b + 1 / c - 1 / d, 0.0))
    out.update(ratio=r, low=r * math.exp(-z * se), high=r * math.exp(z * se))
    return out


def format_proportion(p: dict[str, Any], percent: bool = True) -> str:
    """``12.5% [8.1, 18.7] (k/n)`` or ``- (0/0)``."""
    if p["fraction"] is None:
        return f"- ({p['k']}/{p['n']})"
    scale, unit = (100.0, "%") if percent else (1.0, "")
    return (f"{scale * p['fraction']:.1f}{unit} [{scale * p['low']:.1f}, {scale * p['high']:.1f}] "
            f"({p['k']}/{p['n']})")


def format_ratio(r: dict[str, Any]) -> str:
    if r["ratio"] is None:
        return "undefined (no stable structure in either)"
    mark = " (0.5 added to counts)" if r["corrected"] else ""
    return f"{r['ratio']:.2f} [{r['low']:.2f}, {r['high']:.2f}]{mark}"
