"""Wyckoff tables of the 230 space groups, read from pyxtal's database.

The orbit operations are read from pyxtal's database files (``wyckoff_list.csv``,
``wyckoff_sets.json``) without importing pyxtal, which takes seconds; a test checks them
against ``pyxtal.symmetry.Group``. Settings are pyxtal's, which are the ITA standard
settings: monoclinic unique axis b (cell choice 1), origin choice 2 for the 24 groups that have two origins, hexagonal axes for the
rhombohedral groups. The encoder asks spglib for exactly these settings (``hall_number``).

Shared-orbit rule (the vocabulary): the orbit of a Wyckoff position is the *set* of its
coordinate expressions in the conventional cell, i.e. the affine maps (free parameters ->
point) that pyxtal lists for it, centring translations included, each translation reduced
modulo 1. ``orbit_key`` writes that set canonically (each expression as ``x,y,z`` text with
fractions, the expressions sorted and joined by ``;``). Two positions, of the same or of
different groups, share a Wyckoff token exactly when their orbit keys are equal, e.g.
``(0,y,0),(0,-y,0)`` is 10i, 16m and 47m. Under this rule the 1,731 positions make 940
tokens (the paper's 990 and the ~1,015 of an unreduced count use other normalisations).
Tokens are numbered by first appearance, walking groups 1..230 and letters a, b, ...

Free parameters: a position's first expression (pyxtal's representative) uses a subset of
x, y, z; those are its free parameters, in x, y, z order. Each one can be read back from a
point of the locus through a coordinate row that depends on it alone with coefficient +-1
(checked for every position when the table is built).
"""

from __future__ import annotations

import ast
import csv
import functools
import importlib.util
import json
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

__all__ = [
    "WyckoffPosition",
    "wyckoff_table",
    "n_wyckoff_tokens",
    "crystal_system",
    "lattice_parameter_names",
    "position_ops",
    "group_setting",
]

_AXES = "xyz"
_LETTERS = "abcdefghijklmnopqrstuvwxyzA"  # ITA's 27th letter (alpha) is pyxtal's "A"


@dataclass(frozen=True)
class WyckoffPosition:
    group: int
    letter: str
    index: int
    multiplicity: int
    n_free: int
    orbit_key: str
    token_index: int


@dataclass(frozen=True)
class PositionOps:
    """Numeric form of one Wyckoff position, used by encode and decode.

    ``ops`` (m, 3, 4): affine maps of the orbit, the first is the representative expression.
    ``free_axes``: which of x, y, z are free parameters. ``read_rows``/``read_signs``: the
    coordinate row (and its sign) from which each free parameter is read back.
    """

    ops: np.ndarray
    free_axes: tuple[int, ...]
    read_rows: tuple[int, ...]
    read_signs: tuple[float, ...]


@dataclass(frozen=True)
class GroupSetting:
    """Per-group data the canonicaliser needs: Hall number, normaliser cosets, polar axes.

    ``to_primitive``: rows of a primitive basis in conventional coordinates (None for P).
    ``normalizer`` (k, 3, 4): coset representatives of the group's normaliser as pyxtal's
    database lists them (identity first); ``normalizer_letters[i]`` maps each letter to its
    image under coset i. ``polar_axes``: coordinate axes along which any translation is in the
    normaliser (the origin is free along them).
    """

    hall_number: int
    to_primitive: np.ndarray | None
    normalizer: np.ndarray
    normalizer_letters: tuple[dict[str, str], ...]
    polar_axes: tuple[int, ...]


def crystal_system(group: int) -> str:
    _check_group(group)
    for last, name in (
        (2, "triclinic"),
        (15, "monoclinic"),
        (74, "orthorhombic"),
        (142, "tetragonal"),
        (167, "trigonal"),
        (194, "hexagonal"),
        (230, "cubic"),
    ):
        if group <= last:
            return name
    raise AssertionError("unreachable")


_LATTICE_NAMES = {
    "triclinic": ("a", "b", "c", "alpha", "beta", "gamma"),
    "monoclinic": ("a", "b", "c", "beta"),
    "orthorhombic": ("a", "b", "c"),
    "tetragonal": ("a", "c"),
    "trigonal": ("a", "c"),
    "hexagonal": ("a", "c"),
    "cubic": ("a",),
}


def lattice_parameter_names(group: int) -> tuple[str, ...]:
    return _LATTICE_NAMES[crystal_system(group)]


def _check_group(group: int) -> None:
    if not isinstance(group, (int, np.integer)) or not 1 <= group <= 230:
        raise ValueError(f"space group must be an integer in 1..230, got {group!r}")


def _expr_text(row: np.ndarray) -> str:
    """One coordinate expression (coefficients of x, y, z and translation mod 1) as text."""
    # Coefficients are small integers and translations multiples of 1/24 in every table.
    coefs = tuple(int(round(float(c))) for c in row[:3])
    shift = int(round(float(row[3]) * 24)) % 24
    return _expr_text_cached(coefs, shift)


@functools.cache
def _expr_text_cached(coefs: tuple[int, int, int], shift24: int) -> str:
    parts = []
    for coef, axis in zip(coefs, _AXES, strict=True):
        if coef:
            parts.append(f"{'-' if coef < 0 else '+'}{'' if abs(coef) == 1 else abs(coef)}{axis}")
    if shift24 or not parts:
        parts.append(f"+{Fraction(shift24, 24)}")
    text = "".join(parts)
    return text[1:] if text.startswith("+") else text


def _orbit_key(ops: np.ndarray) -> str:
    if not np.allclose(ops[:, :, :3], np.rint(ops[:, :, :3])) or not np.allclose(
        ops[:, :, 3] * 24, np.rint(ops[:, :, 3] * 24)
    ):
        raise AssertionError("orbit expressions are not integer / 24ths")
    exprs = {",".join(_expr_text(op[i]) for i in range(3)) for op in ops}
    return ";".join(sorted(exprs))


def _position_ops(affines: list[np.ndarray], label: str) -> PositionOps:
    ops = np.array([a[:3, :4] for a in affines], dtype=float)
    ops[:, :, 3] = np.mod(ops[:, :, 3], 1.0)
    rep = ops[0, :, :3]
    free_axes = tuple(j for j in range(3) if np.any(np.abs(rep[:, j]) > 1e-9))
    rows, signs = [], []
    for j in free_axes:
        for i in range(3):
            others = [k for k in free_axes if k != j]
            if abs(abs(rep[i, j]) - 1) < 1e-9 and all(abs(rep[i, k]) < 1e-9 for k in others):
                rows.append(i)
                signs.append(float(np.sign(rep[i, j])))
                break
        else:
            raise AssertionError(f"free parameter {_AXES[j]} of {label} cannot be read back")
    return PositionOps(ops, free_axes, tuple(rows), tuple(signs))


def _pyxtal_database(name: str) -> Path:
    """A file of pyxtal's database, located without importing pyxtal (its import takes seconds)."""
    spec = importlib.util.find_spec("pyxtal")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("pyxtal is not installed; its database provides the Wyckoff tables")
    return Path(next(iter(spec.submodule_search_locations))) / "database" / name


_TERM = re.compile(r"[+-]?[^+-]+")


def _parse_xyz(text: str) -> np.ndarray:
    """A coordinate triplet such as ``-x+y, 2x, z+1/4`` as a 3x4 affine matrix."""
    rows = text.replace(" ", "").split(",")
    if len(rows) != 3:
        raise ValueError(f"not a coordinate triplet: {text!r}")
    out = np.zeros((3, 4))
    for i, row in enumerate(rows):
        for term in _TERM.findall(row):
            if term[-1] in _AXES:
                coef = term[:-1]
                value = -1.0 if coef == "-" else 1.0 if coef in ("", "+") else float(Fraction(coef))
                out[i, _AXES.index(term[-1])] += value
            else:
                out[i, 3] += float(Fraction(term))
    return out


@functools.cache
def _build() -> tuple[dict[int, tuple[WyckoffPosition, ...]], dict[int, tuple[PositionOps, ...]], int]:
    with open(_pyxtal_database("wyckoff_list.csv"), newline="") as handle:
        rows = {int(r[0]): r[1] for r in csv.reader(handle) if r and r[0].isdigit()}
    token_of_key: dict[str, int] = {}
    table: dict[int, tuple[WyckoffPosition, ...]] = {}
    numeric: dict[int, tuple[PositionOps, ...]] = {}
    for g in range(1, 231):
        # pyxtal lists the general position first; ITA letter order is the reverse.
        wps = list(reversed(ast.literal_eval(rows[g])))
        if len(wps) > len(_LETTERS):
            raise AssertionError(f"group {g} has more positions than letters")
        positions, ops_list = [], []
        for index, exprs in enumerate(wps):
            letter = _LETTERS[index]
            pos_ops = _position_ops([_parse_xyz(e) for e in exprs], f"{g}{letter}")
            key = _orbit_key(pos_ops.ops)
            token = token_of_key.setdefault(key, len(token_of_key))
            positions.append(
                WyckoffPosition(
                    group=g,
                    letter=letter,
                    index=index,
                    multiplicity=len(exprs),
                    n_free=len(pos_ops.free_axes),
                    orbit_key=key,
                    token_index=token,
                )
            )
            ops_list.append(pos_ops)
        table[g] = tuple(positions)
        numeric[g] = tuple(ops_list)
    return table, numeric, len(token_of_key)


def wyckoff_table() -> dict[int, tuple[WyckoffPosition, ...]]:
    """All 1,731 Wyckoff positions, per group, in letter order (cached)."""
    return _build()[0]


def n_wyckoff_tokens() -> int:
    return _build()[2]


def position_ops(group: int) -> tuple[PositionOps, ...]:
    """Numeric orbit operations of the group's positions, in letter order (cached)."""
    _check_group(group)
    return _build()[1][group]


_GENERIC_FREE = np.array([0.1234567, 0.3571113, 0.6180339])


def on_locus(rep_op: np.ndarray, points: np.ndarray, tol: float = 1e-4) -> np.ndarray:
    """Which points (n, 3) lie, modulo lattice translations, on a representative's locus."""
    diff = points @ rep_op[:, :3].T + rep_op[:, 3] - points
    return np.all(np.abs(diff - np.rint(diff)) < tol, axis=-1)


def _letter_map(group: int, op: np.ndarray) -> dict[str, str]:
    """Image of each Wyckoff position of ``group`` under a normaliser element ``op``.

    Computed from the operations rather than read from pyxtal's ``Transformed WP`` column,
    which lists pre-images; a test checks the two agree.
    """
    positions = wyckoff_table()[group]
    all_ops = position_ops(group)
    general = all_ops[-1].ops
    mapping = {}
    for src, src_ops in zip(positions, all_ops, strict=True):
        seed = np.zeros(3)
        seed[list(src_ops.free_axes)] = _GENERIC_FREE[: src.n_free]
        point = src_ops.ops[0, :, :3] @ seed + src_ops.ops[0, :, 3]
        moved = op[:, :3] @ point + op[:, 3]
        images = general[:, :, :3] @ moved + general[:, :, 3]
        hits = [
            dst.letter
            for dst, dst_ops in zip(positions, all_ops, strict=True)
            if dst.multiplicity == src.multiplicity and on_locus(dst_ops.ops[0], images).any()
        ]
        if len(hits) != 1:
            raise AssertionError(f"normaliser image of {group}{src.letter} is not one position: {hits}")
        mapping[src.letter] = hits[0]
    return mapping


@functools.cache
def _wyckoff_sets() -> dict:
    """pyxtal's table of normaliser cosets and the letter permutations they induce."""
    return json.loads(_pyxtal_database("wyckoff_sets.json").read_text())


# Rows: a primitive basis in conventional fractional coordinates, per lattice centring.
_PRIMITIVE = {
    "A": np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5], [0.0, -0.5, 0.5]]),
    "C": np.array([[0.5, 0.5, 0.0], [-0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]),
    "I": np.array([[-0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.5, 0.5, -0.5]]),
    "F": np.array([[0.0, 0.5, 0.5], [0.5, 0.0, 0.5], [0.5, 0.5, 0.0]]),
    "R": np.array([[2 / 3, 1 / 3, 1 / 3], [-1 / 3, 1 / 3, 1 / 3], [-1 / 3, -2 / 3, 1 / 3]]),
}


def _centering(group: int) -> str:
    import spglib

    return spglib.get_spacegroup_type(_hall_numbers()[group - 1]).international_short[0]


@functools.cache
def _hall_numbers() -> tuple[int, ...]:
    """spglib Hall number of pyxtal's setting per group: spglib's default (first) setting,
    except origin choice 2 where a group has two origins."""
    import spglib

    first: dict[int, int] = {}
    for hall in range(1, 531):
        info = spglib.get_spacegroup_type(hall)
        if info.number not in first or info.choice == "2":
            first[info.number] = hall
    return tuple(first[g] for g in range(1, 231))


def _op_keys(ops: np.ndarray) -> list[tuple[int, ...]]:
    """Hashable keys of affine operations (k, 3, 4), translations taken modulo 1."""
    rotations = np.rint(ops[:, :, :3]).reshape(len(ops), 9)
    shifts = np.mod(ops[:, :, 3] * 96, 96)
    if not np.allclose(shifts, np.rint(shifts), atol=1e-6):
        raise AssertionError("normaliser translations are not multiples of 1/96")
    shifts = np.rint(shifts) % 96
    return [tuple(row) for row in np.concatenate([rotations, shifts], axis=1).astype(int).tolist()]


def _compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """All products a[i] after b[j] of affine operations, as (len(a) * len(b), 3, 4)."""
    rotations = np.einsum("aij,bjk->abik", a[:, :, :3], b[:, :, :3])
    shifts = np.einsum("aij,bj->abi", a[:, :, :3], b[:, :, 3]) + a[:, None, :, 3]
    return np.concatenate([rotations, shifts[..., None]], axis=-1).reshape(-1, 3, 4)


def _coset_keys(ops: np.ndarray, general: np.ndarray) -> list[tuple[int, ...]]:
    """A key per operation that is equal exactly for operations of one coset ``op G``."""
    keys = _op_keys(_compose(ops, general))
    return [min(keys[i * len(general) : (i + 1) * len(general)]) for i in range(len(ops))]


def _coset_representatives(group: int, listed: np.ndarray) -> np.ndarray:
    """One operation per coset of the group in the normaliser that ``listed`` generates.

    pyxtal's list is not always complete (groups 44, 45 and 80 list half of the cosets, 19
    lists two twice): encode would then reach different alternatives from different starting
    cells. Closing the list under composition (the group is normal in its normaliser, so
    cosets compose) makes the alternatives a property of the crystal. pyxtal's
    representatives keep their order, identity first."""
    general = position_ops(group)[-1].ops
    representatives, seen = [], set()
    frontier = listed
    while len(frontier):
        fresh = []
        for op, key in zip(frontier, _coset_keys(frontier, general), strict=True):
            if key not in seen:
                seen.add(key)
                fresh.append(op)
        representatives += fresh
        frontier = _compose(np.array(fresh), listed) if fresh else fresh
    return np.array(representatives)


@functools.cache
def group_setting(group: int) -> GroupSetting:
    """Hall number, normaliser cosets and polar axes of a group in pyxtal's setting (cached)."""
    _check_group(group)
    alternatives = _wyckoff_sets()[str(group)]
    normalizer = _coset_representatives(
        group, np.array([_parse_xyz(rep) for rep in alternatives["Coset Representative"]])
    )
    letter_maps = tuple(_letter_map(group, op) for op in normalizer)
    general = position_ops(group)[-1].ops
    rotations = general[:, :, :3]
    polar = tuple(
        axis for axis in range(3) if np.allclose(rotations[:, :, axis], np.eye(3)[axis][None, :], atol=1e-9)
    )
    return GroupSetting(
        hall_number=_hall_numbers()[group - 1],
        to_primitive=_PRIMITIVE.get(_centering(group)),
        normalizer=normalizer,
        normalizer_letters=letter_maps,
        polar_axes=polar,
    )
