"""Wyckoff tables of the 230 space groups, read from pyxtal's database.

Settings are pyxtal's, which are the ITA standard settings: monoclinic unique axis b (cell
choice 1), origin choice 2 for the 24 groups that have two origins, hexagonal axes for the
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

import functools
from dataclasses import dataclass
from fractions import Fraction

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

    ``normalizer`` (k, 3, 4): coset representatives of the group's normaliser as pyxtal's
    database lists them (identity first); ``normalizer_letters[i]`` maps each letter to its
    image under coset i. ``polar_axes``: coordinate axes along which any translation is in the
    normaliser (the origin is free along them).
    """

    hall_number: int
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
    parts = []
    for coef, axis in zip(row[:3], _AXES, strict=True):
        c = Fraction(float(coef)).limit_denominator(12)
        if c == 0:
            continue
        sign = "-" if c < 0 else "+"
        mag = abs(c)
        parts.append(f"{sign}{'' if mag == 1 else str(mag)}{axis}")
    t = Fraction(float(row[3])).limit_denominator(48) % 1
    if t != 0 or not parts:
        parts.append(f"+{t}")
    text = "".join(parts)
    return text[1:] if text.startswith("+") else text


def _orbit_key(ops: np.ndarray) -> str:
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


@functools.cache
def _build() -> tuple[
    dict[int, tuple[WyckoffPosition, ...]], dict[int, tuple[PositionOps, ...]], int
]:
    from pyxtal.symmetry import Group

    token_of_key: dict[str, int] = {}
    table: dict[int, tuple[WyckoffPosition, ...]] = {}
    numeric: dict[int, tuple[PositionOps, ...]] = {}
    for g in range(1, 231):
        # pyxtal lists the general position first; ITA letter order is the reverse.
        wps = list(reversed(Group(g).Wyckoff_positions))
        positions, ops_list = [], []
        for index, wp in enumerate(wps):
            pos_ops = _position_ops([op.affine_matrix for op in wp.ops], f"{g}{wp.letter}")
            key = _orbit_key(pos_ops.ops)
            token = token_of_key.setdefault(key, len(token_of_key))
            if len(pos_ops.free_axes) != wp.get_dof():
                raise AssertionError(f"free parameter count of {g}{wp.letter} disagrees with pyxtal")
            positions.append(
                WyckoffPosition(
                    group=g,
                    letter=wp.letter,
                    index=index,
                    multiplicity=int(wp.multiplicity),
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


def _parse_xyz(text: str) -> np.ndarray:
    from pymatgen.core.operations import SymmOp

    return SymmOp.from_xyz_str(text).affine_matrix[:3, :4]


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
    import json
    from importlib import resources

    return json.loads(resources.files("pyxtal").joinpath("database/wyckoff_sets.json").read_text())


@functools.cache
def group_setting(group: int) -> GroupSetting:
    """Hall number, normaliser cosets and polar axes of a group in pyxtal's setting (cached)."""
    from pyxtal.symmetry import pyxtal_hall_numbers

    _check_group(group)
    alternatives = _wyckoff_sets()[str(group)]
    normalizer = np.array([_parse_xyz(rep) for rep in alternatives["Coset Representative"]])
    letter_maps = tuple(_letter_map(group, op) for op in normalizer)
    general = position_ops(group)[-1].ops
    rotations = general[:, :, :3]
    polar = tuple(
        axis for axis in range(3) if np.allclose(rotations[:, :, axis], np.eye(3)[axis][None, :], atol=1e-9)
    )
    return GroupSetting(
        hall_number=int(pyxtal_hall_numbers[group - 1]),
        normalizer=normalizer,
        normalizer_letters=letter_maps,
        polar_axes=polar,
    )
