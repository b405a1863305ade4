"""SMACT validity of compositions (paper II.3: 41.6% of generated vs 47.2% of MP compositions).

A composition is SMACT-valid when ``smact.screening.smact_validity`` accepts it with its
defaults: some combination of the elements' oxidation states is charge neutral and passes the
Pauling electronegativity test, and all-metal compositions count as valid alloys. The check runs
once per distinct reduced formula (cached), so a report over many rows costs little.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

TRAIN_SAMPLE = 20_000
"""Rows of a training store checked at most (a seeded random subset beyond that)."""


@lru_cache(maxsize=200_000)
def smact_valid(formula: str) -> bool:
    """Whether SMACT accepts the composition; an unparsable formula is not valid."""
    from smact.screening import smact_validity

    if not formula:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return bool(smact_validity(formula))
        except Exception:  # smact raises on elements it has no data for (e.g. beyond Lr)
            return False


def smact_counts(formulas: Iterable[str]) -> dict[str, Any]:
    """``{"n", "smact_valid", "fraction"}`` over the given formulas (fraction None when n = 0)."""
    flags = [smact_valid(str(f)) for f in formulas]
    n, k = len(flags), int(sum(flags))
    return {"n": n, "smact_valid": k, "fraction": k / n if n else None}


def training_smact(store: str | Path, limit: int = TRAIN_SAMPLE, seed: int = 0) -> dict[str, Any]:
    """SMACT validity of the training split of a token store (a random subset of ``limit`` rows)."""
    from matra_hpc.data.store import open_token_store

    root = open_token_store(store)
    formulas = np.asarray(root["formula"][...], dtype=object)
    split = np.asarray(root["split"][...], dtype=object)
    formulas = formulas[split == "train"]
    total = len(formulas)
    if total > limit:
        formulas = formulas[np.sort(np.random.default_rng(seed).choice(total, size=limit, replace=False))]
    return {**smact_counts(formulas), "rows_in_split": total, "store": str(store)}
