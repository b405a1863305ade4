"""The PyXtal baseline of paper Fig. 4: random symmetric crystals with charge-balanced compositions.

Output: a generated store (``matra-hpc/generated/1``, contract section G) with one group
``T0.00`` and ids ``<run_id>:pyxtal:s<shard>:<i>``; root attr ``baseline`` says what made it.
Screening and the reports therefore treat it exactly like a model run.

How one row is drawn (deterministic per (seed, shard)):
1. a space group uniformly in 2..230;
2. 2-3 elements (``min_elements``..``max_elements``) uniformly from those with ICSD oxidation
   states in smact (noble gases and Pm have none; Z <= 83), or the chemical system of a random
   valid row of ``systems_from`` (a model run), one oxidation state each, and a
   charge-neutral formula unit from ``smact.neutral_ratios`` (counts <= ``max_count``);
3. a multiple of the formula unit with at most ``max_atoms`` atoms in the conventional cell that
   PyXtal can place on the group's Wyckoff positions (``pyxtal.from_random``, its default
   distance tolerances), with at most ``max_sites`` Wyckoff sites as in the training filters;
4. the crystal goes through ``encode`` and the generated-row checks (``check_sequence``), so the
   row holds the same canonical tokens, flags and prototype hash a sampled row would.
A group is redrawn only after ``attempts_per_group`` failed compositions, so the groups stay
close to uniform; every attempt and failure is counted in the shard manifest.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from matra_hpc.evaluate.config import METHOD, BaselineConfig

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def element_pool() -> tuple[tuple[str, tuple[int, ...]], ...]:
    """(symbol, ICSD oxidation states) of every element up to Bi that smact gives states for."""
    import smact

    pool = []
    for symbol in smact.ordered_elements(1, 83):
        states = tuple(int(s) for s in (smact.Element(symbol).oxidation_states_icsd24 or ()) if s != 0)
        if states:
            pool.append((symbol, states))
    return tuple(pool)


def charge_balanced_formula(rng: np.random.Generator, n_elements: int, max_count: int, tries: int = 50,
                            system: tuple[str, ...] | None = None) -> tuple[list[str], list[int], list[int]] | None:
    """(elements, oxidation states, counts of the reduced formula unit), charge neutral, or None.

    The elements are drawn from the pool, or are ``system`` when one is given (then only the
    oxidation states are drawn).
    """
    import smact

    pool = element_pool()
    states_of = dict(pool)
    for _ in range(tries):
        if system is None:
            picks = rng.choice(len(pool), size=n_elements, replace=False)
            symbols = [pool[i][0] for i in picks]
        else:
            symbols = list(system)
        states = [int(rng.choice(states_of[el])) for el in symbols]
        if not (any(s > 0 for s in states) and any(s < 0 for s in states)):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ratios = smact.neutral_ratios(states, threshold=max_count)
        ratios = sorted({_reduced(r) for r in ratios if all(c > 0 for c in r)})
        if ratios:
            counts = list(ratios[int(rng.integers(len(ratios)))])
            return symbols, states, counts
    return None


def _reduced(counts) -> tuple[int, ...]:
    g = math.gcd(*[int(c) for c in counts])
    return tuple(int(c) // g for c in counts)


def is_charge_balanced(symbols: list[str], counts: list[int]) -> bool:
    """Whether some choice of ICSD oxidation states (one per element) sums to zero charge."""
    import itertools

    states = dict(element_pool())
    if any(s not in states for s in symbols):
        return False
    return any(sum(q * c for q, c in zip(choice, counts, strict=True)) == 0
               for choice in itertools.product(*[states[s] for s in symbols]))


@dataclass
class Draw:
    structure: Any
    spacegroup: int
    elements: list[str]
    oxidation_states: list[int]
    counts: list[int]


def chemical_systems(store: str | Path, min_elements: int, max_elements: int,
                     max_count: int) -> list[tuple[str, ...]]:
    """The chemical systems of a generated run's candidates that the baseline can draw.

    One entry per row that decodes and passes the bond check (what generation hands to
    screening), so a system sampled often is drawn often; kept when it has min..max elements, all
    with ICSD oxidation states, and some choice of states admits a neutral formula (an
    intermetallic system has none). Empty when no row qualifies (then elements are drawn at random).
    """
    from pymatgen.core import Composition

    from matra_hpc.generate import store as gstore

    pool = dict(element_pool())
    systems = []
    for t in gstore.store_temperatures(store):
        table = gstore.read_view(store, t)
        for formula in table.formula[table.decodes.astype(bool) & table.bonds_ok.astype(bool)]:
            system = tuple(sorted(el.symbol for el in Composition(str(formula)).elements))
            if (min_elements <= len(system) <= max_elements and all(el in pool for el in system)
                    and _neutral_possible(system, max_count)):
                systems.append(system)
    if not systems:
        # a poorly trained run may have none: the baseline then draws its elements at random,
        # which the shard manifests record (systems: 0)
        log.warning("--systems-from %s: no candidate (decoded, bonds ok) with %d..%d elements that admits a "
                    "charge-neutral formula; drawing elements at random", store, min_elements, max_elements)
    return systems


@lru_cache(maxsize=4096)
def _neutral_possible(system: tuple[str, ...], max_count: int) -> bool:
    import itertools

    import smact

    states = dict(element_pool())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return any(smact.neutral_ratios(list(choice), threshold=max_count)
                   for choice in itertools.product(*[states[el] for el in system])
                   if any(q > 0 for q in choice) and any(q < 0 for q in choice))


def draw_crystal(rng: np.random.Generator, config: BaselineConfig, stats: dict[str, int],
                 systems: list[tuple[str, ...]] | None = None) -> Draw:
    """One random symmetric, charge-balanced crystal; loops until one is found (counts failures)."""
    from pyxtal import pyxtal

    while True:
        group = int(rng.integers(2, 231))
        stats["groups_drawn"] = stats.get("groups_drawn", 0) + 1
        for _ in range(config.attempts_per_group):
            stats["attempts"] = stats.get("attempts", 0) + 1
            k = int(rng.integers(config.min_elements, config.max_elements + 1))
            system = systems[int(rng.integers(len(systems)))] if systems else None
            formula = charge_balanced_formula(rng, k, config.max_count, system=system)
            if formula is None:
                _count(stats, "no_neutral_formula")
                continue
            symbols, states, unit = formula
            multiples = [z for z in range(1, config.max_atoms + 1) if z * sum(unit) <= config.max_atoms]
            if not multiples:
                _count(stats, "too_many_atoms")
                continue
            z = int(rng.choice(multiples))
            crystal = pyxtal()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    # the seed must go to from_random itself: the constructor's is not passed on
                    crystal.from_random(3, group, symbols, [z * c for c in unit],
                                        random_state=int(rng.integers(2**31 - 1)))
            except Exception:  # PyXtal raises on compositions the group's positions cannot hold
                _count(stats, "pyxtal_incompatible")
                continue
            if not crystal.valid:
                _count(stats, "pyxtal_no_placement")
                continue
            if len(crystal.atom_sites) > config.max_sites:
                _count(stats, "too_many_sites")
                continue
            return Draw(crystal.to_pymatgen(), group, symbols, states, [z * c for c in unit])


def _count(stats: dict[str, int], key: str) -> None:
    stats[key] = stats.get(key, 0) + 1


def baseline_shard(config: BaselineConfig, run_id: str, shard: int, train_index=None,
                   systems: list[tuple[str, ...]] | None = None):
    """The rows of one shard as a ``GeneratedTable``, plus the shard's draw statistics."""
    from matra_hpc.generate.checks import check_sequence
    from matra_hpc.generate.table import TableBuilder
    from matra_hpc.tokens import encode

    if systems is None and config.systems_from:
        systems = chemical_systems(config.systems_from, config.min_elements, config.max_elements, config.max_count)
    systems = systems or None
    rng = np.random.default_rng([config.seed, shard, 0x9A7A])
    stats: dict[str, int] = {}
    groups: list[int] = []
    builder = TableBuilder()
    while len(builder.rows) < config.shard_rows(shard):
        draw = draw_crystal(rng, config, stats, systems)
        try:
            seq = encode(draw.structure)
        except Exception as exc:  # e.g. spglib finds a description over the site limit
            _count(stats, f"encode_{getattr(exc, 'reason', type(exc).__name__)}")
            continue
        check = check_sequence(seq.tokens, seq.values, True, min_distance=config.min_distance)
        if not check.decodes:
            _count(stats, "decode_failed")
            continue
        dup_train = bool(train_index is not None and check.prototype_hash
                         and train_index.is_known(check.prototype_hash, check.structure))
        index = len(builder.rows)
        builder.add(f"{run_id}:{METHOD}:s{shard}:{index}", seq.tokens, seq.values, check, dup_train)
        groups.append(draw.spacegroup)
    return builder.build(), {"draws": stats, "drawn_spacegroups": groups, "systems": len(systems or ())}
