"""Conditions for generation: constraints the grammar enforces in its masks.

A :class:`Condition` restricts the sequences the grammar allows (docs/contracts.md section E):

* ``stability``: ``'low'`` or ``'high'``; the sequence must start with ``EHULL_LOW``/``EHULL_HIGH``.
* ``elements``: the chemical system, exactly these elements (arity = their number).
* ``composition``: an exact composition up to a common multiple. The counts are reduced by
  their greatest common divisor, so ``Fe2O4`` and ``FeO2`` are the same condition; the
  conventional cell may hold any multiple that fits the count and site limits.
* ``spacegroups``: the space group is one of these (group 1 is never encoded, so it is refused).
* ``wyckoff``: required Wyckoff positions, ``'225:4a'`` (group, multiplicity, letter; the
  multiplicity may be left out: ``'225:a'``) or ``'4a'`` when exactly one space group is
  given. The group must then be one of the groups named here, and every position required for
  that group must be occupied (by any element); a repeated entry is required that many times,
  which only positions with a free parameter allow. At most 4 required positions per group.

:func:`check_condition` (and :func:`resolve_condition`, which the grammar uses) refuses an
impossible condition before any sampling, with a one-line :class:`ConditionError`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import reduce

import numpy as np

from matra_hpc.errors import MatraError
from matra_hpc.tokens._reachability import reach_tables
from matra_hpc.tokens.vocab import MAX_ARITY, MAX_COUNT, N_SPACEGROUPS, load_vocab
from matra_hpc.tokens.wyckoff import wyckoff_table

__all__ = ["Condition", "ConditionError", "ResolvedCondition", "check_condition", "resolve_condition"]

MAX_REQUIRED_PER_GROUP = 4
_STABILITY = ("low", "high")
_WYCKOFF_LABEL = re.compile(r"^(?:(\d+):)?(\d*)([A-Za-z])$")


class ConditionError(MatraError, ValueError):
    """A generation condition is malformed or cannot be met by any sequence."""


@dataclass(frozen=True)
class Condition:
    stability: str | None = None
    elements: tuple[str, ...] | None = None
    composition: dict[str, int] | None = None
    spacegroups: tuple[int, ...] | None = None
    wyckoff: tuple[str, ...] | None = None

    @classmethod
    def parse(cls, spec: str) -> Condition:
        """Read the CLI syntax, ``key=value`` pairs joined by ``;``.

        Example: ``"elements=Al,Ca,Cu;spacegroups=191,194;stability=low"``; a composition is a
        formula (``composition=Al2CaCu``) or ``El:n`` pairs (``composition=Al:2,Ca:1,Cu:1``);
        ``wyckoff=225:4a,225:8c``.
        """
        fields: dict = {}
        for part in filter(None, (p.strip() for p in spec.split(";"))):
            key, sep, value = part.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or not value:
                raise ConditionError(f"condition {part!r} is not key=value")
            if key in fields:
                raise ConditionError(f"condition key {key!r} given twice")
            items = tuple(v.strip() for v in value.split(",") if v.strip())
            if key == "stability":
                fields[key] = value
            elif key == "elements":
                fields[key] = items
            elif key == "composition":
                fields[key] = _parse_composition(value)
            elif key == "spacegroups":
                try:
                    fields[key] = tuple(int(v) for v in items)
                except ValueError:
                    raise ConditionError(f"spacegroups must be integers, got {value!r}") from None
            elif key == "wyckoff":
                fields[key] = items
            else:
                raise ConditionError(
                    f"unknown condition key {key!r}; valid: stability, elements, composition, spacegroups, wyckoff"
                )
        return cls(**fields)


def _parse_composition(text: str) -> dict[str, int]:
    if ":" in text:
        out: dict[str, int] = {}
        for item in text.split(","):
            symbol, _, number = item.partition(":")
            try:
                out[symbol.strip()] = int(number)
            except ValueError:
                raise ConditionError(f"composition entry {item!r} is not El:count") from None
        return out
    match = re.findall(r"([A-Z][a-z]?)(\d*)", text)
    if "".join(s + n for s, n in match) != text.replace(" ", ""):
        raise ConditionError(f"composition {text!r} is not a formula like Al2CaCu or Al:2,Ca:1,Cu:1")
    out = {}
    for symbol, number in match:
        out[symbol] = out.get(symbol, 0) + (int(number) if number else 1)
    return out


@dataclass
class ResolvedCondition:
    """A checked condition in the grammar's terms (atomic numbers, position indices)."""

    stability: str | None = None
    element_zs: frozenset[int] | None = None
    reduced: dict[int, int] | None = None  # Z -> reduced count
    multipliers: tuple[int, ...] = ()  # feasible multiples of ``reduced`` (composition only)
    groups: tuple[int, ...] = ()  # allowed groups, ascending, never 1
    required: dict[int, tuple[int, ...]] = field(default_factory=dict)  # group -> position indices
    arities: tuple[int, ...] = ()


def _symbol_z(symbol: object, what: str) -> int:
    vocab = load_vocab()
    if not isinstance(symbol, str) or symbol not in vocab.element_symbols:
        raise ConditionError(f"unknown element {symbol!r} in {what}")
    return vocab.z_of_symbol(symbol)


def _parse_required(cond: Condition, spacegroups: tuple[int, ...] | None) -> dict[int, list[int]]:
    table = wyckoff_table()
    required: dict[int, list[int]] = {}
    for label in cond.wyckoff or ():
        match = _WYCKOFF_LABEL.match(str(label).strip())
        if match is None:
            raise ConditionError(f"Wyckoff condition {label!r} is not like '225:4a' or '4a'")
        group_text, mult_text, letter = match.groups()
        if group_text is None:
            if spacegroups is None or len(set(spacegroups)) != 1:
                raise ConditionError(
                    f"Wyckoff condition {label!r} names no space group; write 'G:{mult_text}{letter}' "
                    "or give exactly one space group"
                )
            group = spacegroups[0]
        else:
            group = int(group_text)
        if not 2 <= group <= N_SPACEGROUPS:
            raise ConditionError(f"Wyckoff condition {label!r}: space group {group} is outside 2..230")
        positions = {p.letter: p for p in table[group]}
        position = positions.get(letter)
        if position is None:
            raise ConditionError(
                f"Wyckoff condition {label!r}: space group {group} has no position {letter!r} "
                f"(it has {', '.join(f'{p.multiplicity}{p.letter}' for p in table[group])})"
            )
        if mult_text and int(mult_text) != position.multiplicity:
            raise ConditionError(
                f"Wyckoff condition {label!r}: position {letter} of space group {group} has "
                f"multiplicity {position.multiplicity}, not {mult_text}"
            )
        entries = required.setdefault(group, [])
        if position.n_free == 0 and position.index in entries:
            raise ConditionError(
                f"Wyckoff condition {label!r}: position {position.multiplicity}{letter} of space group "
                f"{group} has no free parameter, so it holds one orbit only"
            )
        entries.append(position.index)
    for group, entries in required.items():
        if len(entries) > MAX_REQUIRED_PER_GROUP:
            raise ConditionError(
                f"Wyckoff condition: {len(entries)} positions required in space group {group}; "
                f"at most {MAX_REQUIRED_PER_GROUP} are supported"
            )
        if sum(table[group][i].multiplicity for i in entries) > MAX_COUNT:
            raise ConditionError(
                f"Wyckoff condition: required positions of space group {group} hold more than {MAX_COUNT} atoms"
            )
    return required


def resolve_condition(cond: Condition | None, *, max_sites: int = 15) -> ResolvedCondition:
    """Check ``cond`` and translate it; raise :class:`ConditionError` if nothing can satisfy it."""
    if cond is None:
        cond = Condition()
    if not isinstance(max_sites, int) or max_sites < 1:
        raise ConditionError(f"max_sites must be a positive integer, got {max_sites!r}")
    out = ResolvedCondition()
    if cond.stability is not None:
        if cond.stability not in _STABILITY:
            raise ConditionError(f"stability must be 'low' or 'high', got {cond.stability!r}")
        out.stability = cond.stability
    if cond.elements is not None:
        zs = [_symbol_z(s, "elements") for s in cond.elements]
        if not zs:
            raise ConditionError("elements condition is empty")
        if len(set(zs)) != len(zs):
            raise ConditionError(f"elements condition repeats an element: {','.join(cond.elements)}")
        if len(zs) > MAX_ARITY:
            raise ConditionError(f"elements condition has {len(zs)} elements; at most {MAX_ARITY}")
        out.element_zs = frozenset(zs)
    if cond.composition is not None:
        if not isinstance(cond.composition, dict) or not cond.composition:
            raise ConditionError("composition condition must be a non-empty mapping element -> count")
        counts = {}
        for symbol, n in cond.composition.items():
            z = _symbol_z(symbol, "composition")
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise ConditionError(f"composition count of {symbol} must be a positive integer, got {n!r}")
            counts[z] = n
        if len(counts) > MAX_ARITY:
            raise ConditionError(f"composition has {len(counts)} elements; at most {MAX_ARITY}")
        if out.element_zs is not None and out.element_zs != frozenset(counts):
            raise ConditionError("elements and composition conditions name different elements")
        divisor = reduce(math.gcd, counts.values())
        out.reduced = {z: n // divisor for z, n in counts.items()}
        out.element_zs = frozenset(counts)
    groups = set(range(2, N_SPACEGROUPS + 1))
    if cond.spacegroups is not None:
        given = tuple(cond.spacegroups)
        if not given:
            raise ConditionError("spacegroups condition is empty")
        for g in given:
            if not isinstance(g, int) or isinstance(g, bool) or not 1 <= g <= N_SPACEGROUPS:
                raise ConditionError(f"space group {g!r} is outside 1..230")
            if g == 1:
                raise ConditionError(
                    "space group 1 is never encoded (sequences need symmetry); choose 2..230"
                )
        groups &= set(given)
    required = _parse_required(cond, tuple(cond.spacegroups) if cond.spacegroups is not None else None)
    if cond.wyckoff is not None:
        named = set(required)
        if not named & groups:
            raise ConditionError(
                f"Wyckoff condition names space groups {sorted(named)}, none of them allowed by spacegroups"
            )
        groups &= named
    out.required = {g: tuple(sorted(v)) for g, v in required.items() if g in groups}
    out.groups = tuple(sorted(groups))
    _check_feasible(out, max_sites)
    return out


def _group_cost(res: ResolvedCondition, group: int, counts: tuple[int, ...], unknown: int) -> int:
    tables = reach_tables()
    req = res.required.get(group)
    if req:
        rr = tables.required(group, req)
        return rr.min_cost(counts, unknown, rr.reserved_avail((), req), req)
    reach = tables.groups[group]
    return reach.min_cost(counts, reach.full) + unknown


def _check_feasible(res: ResolvedCondition, max_sites: int) -> None:
    groups = res.groups
    if res.reduced is not None:
        reduced = tuple(sorted(res.reduced.values()))
        top = MAX_COUNT // max(reduced)
        tables = reach_tables()
        plain = np.isin(tables.group_ids, [g for g in groups if g not in res.required])
        with_required = [g for g in groups if g in res.required]

        def fits(counts: tuple[int, ...]) -> bool:
            # all groups without required positions at once, then the few with them
            if np.any(tables.group_costs(counts)[plain] <= max_sites):
                return True
            return any(_group_cost(res, g, counts, 0) <= max_sites for g in with_required)

        res.multipliers = tuple(m for m in range(1, top + 1) if fits(tuple(m * r for r in reduced)))
        if not res.multipliers:
            vocab = load_vocab()
            formula = "".join(f"{vocab.element_symbols[z - 1]}{n}" for z, n in sorted(res.reduced.items()))
            raise ConditionError(
                f"composition {formula} cannot be realised in any allowed space group with at most "
                f"{max_sites} Wyckoff sites and {MAX_COUNT} atoms per element in the conventional cell"
            )
        res.arities = (len(reduced),)
        return
    candidates = (len(res.element_zs),) if res.element_zs is not None else tuple(range(1, MAX_ARITY + 1))
    res.arities = tuple(k for k in candidates if any(_group_cost(res, g, (), k) <= max_sites for g in groups))
    if not res.arities:
        raise ConditionError(
            f"no space group allowed by the condition fits {candidates[0]} elements and its required "
            f"Wyckoff positions within {max_sites} sites"
        )


def check_condition(cond: Condition, *, max_sites: int = 15) -> None:
    """Raise :class:`ConditionError` (one line) if ``cond`` is malformed or impossible."""
    resolve_condition(cond, max_sites=max_sites)
