"""Structure -> canonical token sequence (token format v2, docs/contracts.md section F).

Steps: validate the input (one rejection reason each, contract section 3); a symmetry finder
(moyopy by default, spglib on request), called on plain arrays, gives the group, its standard
conventional cell in pyxtal's setting (ITA standard, origin choice 2) and the transformation
from the input into it; the orbits and Wyckoff letters are found from the group's operations
in that cell, and the metric and positions are refined from the input itself (so both finders
give the same values); then the canonical description is chosen among every alternative the
group's normaliser allows: its cosets (closed under composition), for polar groups every
origin along the polar axes that puts an atom of the first site at 0, and for triclinic and
monoclinic groups every equally reduced cell. Rejections: ``too_many_sites`` also covers more
than 8 elements or a count above 512 (the vocabulary's limits).

Canonical order, per alternative: sites sorted by (Wyckoff letter order, Z, free values); each
orbit represented by the point of the orbit on the position's representative expression whose
free values are smallest. Alternatives are compared by the discrete list (letters, Z) first,
then by the free values site by site, then by the lattice parameters. Putting the discrete
list first makes the choice of Wyckoff letters a property of the prototype alone, which keeps
``prototype_hash`` stable for crystals of one prototype with different free values. Values
within 1e-7 compare equal, so float noise never flips a choice.

The finder then looks at the exactly symmetric primitive cell the description spells (one
more finder call): when it shows more symmetry the description is rebuilt until stable, so
that ``encode(decode(encode(x)))`` equals ``encode(x)`` even when symmetrising reveals more
symmetry than the raw input showed.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from matra_hpc.tokens.errors import EncodeError
from matra_hpc.tokens.sequence import TokenSequence
from matra_hpc.tokens.vocab import MAX_ARITY, MAX_COUNT, N_ELEMENTS, load_vocab
from matra_hpc.tokens.wyckoff import (
    crystal_system,
    group_setting,
    position_ops,
    wyckoff_table,
)

__all__ = ["encode", "describe", "Description", "Site", "EHULL_THRESHOLD", "lattice_values"]

EHULL_THRESHOLD = 0.075  # eV/atom; low means e_above_hull <= threshold


@dataclass(frozen=True)
class Site:
    letter_index: int
    letter: str
    z: int
    free: tuple[float, ...]


@dataclass(frozen=True)
class Description:
    """The canonical description of a crystal: what the token sequence spells out."""

    group: int
    sites: tuple[Site, ...]
    lattice: tuple[float, ...]

    def counts(self) -> dict[int, int]:
        table = wyckoff_table()[self.group]
        out: dict[int, int] = {}
        for site in self.sites:
            out[site.z] = out.get(site.z, 0) + table[site.letter_index].multiplicity
        return dict(sorted(out.items()))


def lattice_values(metric: np.ndarray, group: int) -> tuple[float, ...]:
    """The crystal system's free lattice parameters from a metric tensor (A, degrees)."""
    a, b, c = np.sqrt(np.diag(metric))
    system = crystal_system(group)
    if system == "cubic":
        return (float(a),)
    if system in ("tetragonal", "trigonal", "hexagonal"):
        return (float(a), float(c))
    if system == "orthorhombic":
        return (float(a), float(b), float(c))

    def angle(i: int, j: int, li: float, lj: float) -> float:
        return float(np.degrees(np.arccos(np.clip(metric[i, j] / (li * lj), -1.0, 1.0))))

    if system == "monoclinic":
        return (float(a), float(b), float(c), angle(0, 2, a, c))
    return (float(a), float(b), float(c), angle(1, 2, b, c), angle(0, 2, a, c), angle(0, 1, a, b))


# ---------------------------------------------------------------- input checks
def _arrays(structure) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lattice, fractional coordinates and atomic numbers, or the one rejection reason."""
    from pymatgen.core import Molecule, Structure
    from pymatgen.core.periodic_table import DummySpecies

    if isinstance(structure, dict):
        try:
            structure = Structure.from_dict(structure)
        except Exception as exc:  # any malformed dict is a parse error
            raise EncodeError("parse_error", f"not a pymatgen Structure dict: {exc}") from None
    if isinstance(structure, Molecule):
        raise EncodeError("not_periodic", "a Molecule has no lattice")
    if not isinstance(structure, Structure):
        raise EncodeError("parse_error", f"expected a pymatgen Structure, got {type(structure).__name__}")
    if len(structure) == 0:
        raise EncodeError("parse_error", "structure has no sites")
    lattice = structure.lattice
    if not all(lattice.pbc):
        raise EncodeError("not_periodic", f"periodic boundary conditions {lattice.pbc}")
    matrix = np.asarray(lattice.matrix, dtype=float)
    frac = np.asarray(structure.frac_coords, dtype=float)
    if not (np.all(np.isfinite(matrix)) and np.all(np.isfinite(frac))):
        raise EncodeError("nan_or_inf", "lattice or coordinates are not finite")
    volume = abs(float(np.linalg.det(matrix)))
    if not volume > 1e-6:
        raise EncodeError("not_periodic", f"lattice volume {volume:.3g} A^3 spans no 3D cell")
    # One pass over the sites' compositions: pymatgen's is_ordered and species properties
    # each walk the sites again (same test: one species of occupancy 1 per site).
    compositions = [site.species for site in structure.sites]
    if not all(len(c) == 1 and c.num_atoms == 1 for c in compositions):
        raise EncodeError("disordered", "partial occupancies or mixed species on a site")
    numbers = np.empty(len(structure), dtype=int)
    for i, composition in enumerate(compositions):
        species = next(iter(composition))
        z = getattr(species, "Z", None)
        if isinstance(species, DummySpecies) or z is None or not 1 <= z <= N_ELEMENTS:
            raise EncodeError("unknown_element", f"species {species!s} is not a chemical element")
        numbers[i] = z
    return matrix, frac, numbers


# ---------------------------------------------------------------- symmetry
SYMMETRY_BACKENDS = ("moyopy", "spglib")
DEFAULT_SYMMETRY = "moyopy"

# moyopy logs through Python's logging, logger "moyo": a warning for every input cell that is
# not primitive ("Omitted N primitive-cell symmetry operations ...") about its per-site orbits,
# which encode does not read (it finds orbits in the standard cell itself), and about ten debug
# records per call. Set before moyopy's first call, as its bridge caches logger levels.
logging.getLogger("moyo").setLevel(logging.ERROR)


@dataclass(frozen=True)
class _StandardCell:
    """The symmetry finder's conventional cell in pyxtal's setting of ``group``.

    ``positions`` are the finder's refined positions (used for the orbits only); ``rotation``
    and ``shift`` map input fractional coordinates into the cell before any refinement
    (``x_std = rotation @ x + shift``), so that encode refines the input itself."""

    group: int
    positions: np.ndarray  # (n, 3) fractional, in [0, 1)
    types: np.ndarray  # (n,) atomic numbers
    rotation: np.ndarray  # (3, 3)
    shift: np.ndarray  # (3,)


def _standard_cell(
    matrix, frac, numbers, symprec: float, angle_tolerance: float, symmetry: str
) -> _StandardCell:
    if symmetry == "moyopy":
        group, positions, types, rotation, shift = _moyopy_cell(matrix, frac, numbers, symprec)
    elif symmetry == "spglib":
        group, positions, types, rotation, shift = _spglib_cell(
            matrix, frac, numbers, symprec, angle_tolerance
        )
    else:
        raise ValueError(f"symmetry must be one of {SYMMETRY_BACKENDS}, got {symmetry!r}")
    return _StandardCell(
        group,
        np.mod(np.asarray(positions, dtype=float), 1.0),
        np.asarray(types, dtype=int),
        np.asarray(rotation, dtype=float),
        np.asarray(shift, dtype=float),
    )


def _moyopy_cell(matrix, frac, numbers, symprec: float):
    # No angle tolerance: moyopy's own lattice criterion follows symprec (an explicit angle
    # tolerance makes moyopy 0.21 loop without end on some cells, e.g. flla mp-1411).
    import moyopy

    try:
        ds = moyopy.MoyoDataset(
            moyopy.Cell(matrix, frac, numbers), symprec=symprec, setting=_moyopy_setting()
        )
    except Exception as exc:  # moyopy raises ValueError on overlapping atoms and similar
        raise EncodeError("symmetry_failed", f"moyopy: {exc}") from None
    if ds.number == 1:
        raise EncodeError("spacegroup_1", "space group P1")
    if ds.hall_number != group_setting(ds.number).hall_number:
        raise EncodeError("symmetry_failed", f"moyopy gave Hall setting {ds.hall_number} for {ds.number}")
    cell = ds.std_cell
    # moyopy: x_std = inv(std_linear) @ (x - std_origin_shift).
    rotation = np.linalg.inv(np.asarray(ds.std_linear))
    return ds.number, cell.positions, cell.numbers, rotation, -rotation @ np.asarray(ds.std_origin_shift)


@functools.cache
def _moyopy_setting():
    import moyopy

    # ITA standard: unique axis b, cell choice 1, hexagonal axes, origin choice 2 (pyxtal's).
    return moyopy.Setting.standard()


def _spglib_cell(matrix, frac, numbers, symprec: float, angle_tolerance: float):
    ds = _spglib_dataset(matrix, frac, numbers, symprec, angle_tolerance)
    # spglib: x_std = transformation_matrix @ x + origin_shift.
    return int(ds.number), ds.std_positions, ds.std_types, ds.transformation_matrix, ds.origin_shift


def _spglib_dataset(matrix, frac, numbers, symprec: float, angle_tolerance: float):
    import spglib

    try:
        ds = spglib.get_symmetry_dataset(
            (matrix, frac, numbers), symprec=symprec, angle_tolerance=angle_tolerance
        )
    except Exception as exc:  # spglib raises on overlapping atoms and similar
        raise EncodeError("symmetry_failed", f"spglib: {exc}") from None
    if ds is None:
        raise EncodeError("symmetry_failed", "spglib found no symmetry dataset")
    if ds.number == 1:
        raise EncodeError("spacegroup_1", "space group P1")
    hall = group_setting(ds.number).hall_number
    if ds.hall_number != hall:
        # pyxtal's tables use origin choice 2; ask spglib for that setting.
        try:
            ds = spglib.get_symmetry_dataset(
                (matrix, frac, numbers), symprec=symprec, angle_tolerance=angle_tolerance, hall_number=hall
            )
        except Exception as exc:
            raise EncodeError("symmetry_failed", f"spglib (hall {hall}): {exc}") from None
        if ds is None or ds.hall_number != hall:
            raise EncodeError("symmetry_failed", f"spglib cannot standardise to Hall setting {hall}")
    return ds


_ORBIT_TOL = 1e-4  # fractional; the standard cells are refined, so images coincide to ~1e-10
_ALL_PAIRS_LIMIT = 5_000  # operations x atoms^2 up to which orbits come from one all-pairs test


def _orbits(cell: _StandardCell) -> list[tuple[int, int, np.ndarray]]:
    """Orbits of the standard cell under the group: (letter index, Z, atom indices) each.

    Found from the group's operations in the cell itself rather than from the symmetry
    finder's per-site lists, so both finders give the same orbits and letters."""
    group = cell.group
    general = position_ops(group)[-1].ops
    positions = cell.positions
    n = len(positions)
    images = _apply_rotations(general[:, :, :3], positions) + general[:, None, :, 3]  # (m, n, 3)
    related = None
    if len(general) * n * n <= _ALL_PAIRS_LIMIT:  # small cells: every pair at once beats a loop
        diff = images[:, :, None, :] - positions[None, None, :, :]
        diff -= np.rint(diff)
        related = (np.abs(diff) < _ORBIT_TOL).all(axis=-1).any(axis=0)
    orbit_of = [-1] * n
    types = cell.types.tolist()
    out = []
    for i in range(n):
        if orbit_of[i] >= 0:
            continue
        if related is not None:
            members = np.flatnonzero(related[i])
        else:
            diff = images[:, i, None, :] - positions[None, :, :]
            diff -= np.rint(diff)
            members = np.flatnonzero((np.abs(diff) < _ORBIT_TOL).all(axis=-1).any(axis=0))
        listed = members.tolist()
        if any(orbit_of[j] >= 0 or types[j] != types[i] for j in listed):
            raise EncodeError("symmetry_failed", f"orbits of group {group} overlap in the standard cell")
        for j in listed:
            orbit_of[j] = len(out)
        out.append((types[i], members))
    letters = _identify_letters(group, positions, [members for _, members in out])
    return [(li, z, members) for li, (z, members) in zip(letters, out, strict=True)]


@functools.cache
def _point_group(group: int) -> np.ndarray:
    """The distinct rotation parts of the group's operations in its standard setting."""
    rotations = np.rint(position_ops(group)[-1].ops[:, :, :3]).astype(int)
    return np.unique(rotations, axis=0).astype(float)


def _apply_rotations(rotations: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``rotations[m] @ points[n]`` for every pair, (m, n, 3), as one 2-D product (einsum and
    stacked matmul loop over tiny products). Rotation entries are -1, 0 or 1, so every term
    is exact; on the demo set the results are bit for bit the per-operation products."""
    return (rotations.reshape(-1, 3) @ points.T).reshape(len(rotations), 3, len(points)).transpose(0, 2, 1)


def _mean_rows(rows: np.ndarray) -> np.ndarray:
    """``rows.mean(axis=0)`` (numpy's mean is this sum and division) without its overhead."""
    return rows.sum(axis=0) / len(rows)


_BATCH_VALUES = 1_000_000  # floats per array pass in _orbit_centres (memory bound on big inputs)


def _orbit_centres(positions, images_of_input, numbers, metric, orbits, limit: float) -> np.ndarray:
    """Each orbit's centre: its first point plus the mean offset of every image of an input
    atom of its element within ``limit`` (squared distance, A^2) of that point.

    Orbits are taken in batches, every anchor against every image in one pass; the values
    are those a per-orbit pass computes, row for row."""
    firsts = [members[0] for _, _, members in orbits]
    zs = np.array([z for _, z, _ in orbits])
    per_orbit = images_of_input.size
    step = max(1, _BATCH_VALUES // per_orbit)
    centres = []
    for lo in range(0, len(orbits), step):
        anchors = positions[firsts[lo : lo + step]]
        delta = images_of_input[None] - anchors[:, None, None, :]  # (orbits, m, n, 3)
        delta -= np.rint(delta)
        # One 2-D product: numpy runs a stacked one as a loop of tiny ones.
        near = ((delta.reshape(-1, 3) @ metric).reshape(delta.shape) * delta).sum(axis=-1) < limit
        near &= (numbers[None, :] == zs[lo : lo + step, None])[:, None, :]
        if not near.any(axis=(1, 2)).all():
            raise EncodeError("symmetry_failed", "no input atom lies near an orbit of the standard cell")
        centres += [anchor + _mean_rows(d[k]) for anchor, d, k in zip(anchors, delta, near, strict=True)]
    return np.stack(centres)


def _refine(cell: _StandardCell, matrix, frac, numbers, orbits, symprec: float, exact: bool):
    """Exactly symmetric metric and positions of the standard cell, from the input itself.

    The metric is averaged over the point group; each orbit's representative is the mean of
    every image of the input's atoms that lands on it (within a few symprec), which lies on
    its Wyckoff locus exactly, and the other points of the orbit are its images. The result
    depends on the input and the chosen cell only, not on how the symmetry finder refines,
    so moyopy and spglib give the same values when they find the same group. An ``exact``
    input (the cell encode rebuilt itself) needs no averaging: the finder's cell is it.
    """
    group = cell.group
    general = position_ops(group)[-1].ops
    rotations, translations = general[:, :, :3], general[:, :, 3]
    basis = np.linalg.inv(cell.rotation).T @ matrix  # rows: the standard cell's vectors
    metric = basis @ basis.T
    if exact:
        return metric, cell.positions
    point_group = _point_group(group)
    # Three-operand einsum runs unoptimised loops; matmul is the fast path.
    metric = (np.swapaxes(point_group, 1, 2) @ metric @ point_group).mean(axis=0)
    inside = frac @ cell.rotation.T + cell.shift
    images_of_input = _apply_rotations(rotations, inside) + translations[:, None, :]
    limit = (4.0 * symprec) ** 2
    centres = _orbit_centres(cell.positions, images_of_input, numbers, metric, orbits, limit)
    # Each atom of the standard cell moves to the nearest image of its orbit's centre.
    atoms = np.concatenate([members for _, _, members in orbits])
    orbit_of = np.repeat(np.arange(len(orbits)), [len(members) for _, _, members in orbits])
    images = (rotations @ centres.T).transpose(0, 2, 1) + translations[:, None, :]  # (m, orbits, 3)
    offset = cell.positions[atoms][None, :, :] - images[:, orbit_of]
    offset -= np.rint(offset)
    nearest = np.einsum("mki,mki->mk", offset, offset).argmin(axis=0)
    positions = cell.positions.copy()
    positions[atoms] -= offset[nearest, np.arange(len(atoms))]
    return metric, np.mod(positions, 1.0)


_TOL = 1e-7  # values closer than this compare equal (the inputs of the last pass are exact)
_SNAP = 1e-8  # a free value this close below 1 is the point 0


def _compare_values(a, b) -> int:
    """Lexicographic comparison of two float sequences, equal within ``_TOL``.

    Callers pass Python float lists: element access on numpy arrays costs more than the
    comparison itself."""
    for x, y in zip(a, b, strict=True):
        if abs(x - y) > _TOL * max(1.0, abs(x)):
            return -1 if x < y else 1
    return 0


@dataclass(frozen=True)
class _Readers:
    """Every Wyckoff position of a group stacked, for reading free values of many atoms at once.

    Per position: its representative expression (rotation transposed, translation) and the
    coordinate rows, signs and translations its free values are read from, padded to three
    (``n_free`` says how many are real)."""

    rotation_t: np.ndarray  # (positions, 3, 3)
    translation: np.ndarray  # (positions, 3)
    rows: np.ndarray  # (positions, 3) int
    signs: np.ndarray  # (positions, 3)
    read_translation: np.ndarray  # (positions, 3)
    n_free: tuple[int, ...]


@functools.cache
def _readers(group: int) -> _Readers:
    all_ops = position_ops(group)
    count = len(all_ops)
    rotation_t = np.empty((count, 3, 3))
    translation = np.empty((count, 3))
    rows = np.zeros((count, 3), dtype=int)
    signs = np.ones((count, 3))
    read_translation = np.zeros((count, 3))
    for i, ops in enumerate(all_ops):
        rep = ops.ops[0]
        rotation_t[i] = rep[:, :3].T
        translation[i] = rep[:, 3]
        k = len(ops.read_rows)
        rows[i, :k] = ops.read_rows
        signs[i, :k] = ops.read_signs
        read_translation[i, :k] = rep[list(ops.read_rows), 3]
    return _Readers(
        rotation_t, translation, rows, signs, read_translation, tuple(len(o.free_axes) for o in all_ops)
    )


def _free_value_rows(readers: _Readers, letters: np.ndarray, points: np.ndarray):
    """For points (alternatives, shifts, atoms, 3) on the positions ``letters`` (alternatives,
    atoms): whether each lies on its position's representative expression, and the free
    values read from it (padded to three).

    One array pass for every atom of every candidate; the arithmetic per value is the one a
    per-orbit reading would do, so the values are bit for bit the same."""
    rotation_t = readers.rotation_t[letters][:, None]  # (k, 1, n, 3, 3)
    # Only compared with a tolerance: a broadcast product beats einsum on these small stacks.
    diff = (points[..., :, None] * rotation_t).sum(axis=-2) + readers.translation[letters][:, None] - points
    fit = (np.abs(diff - np.rint(diff)) < 1e-4).all(axis=-1)
    read = np.take_along_axis(points, readers.rows[letters][:, None], axis=3)
    values = np.mod(
        readers.signs[letters][:, None] * (read - readers.read_translation[letters][:, None]), 1.0
    )
    values[values > 1.0 - _SNAP] = 0.0
    return fit, values


def _unit_less(row: list, best: list, n_free: int) -> bool:
    """``_compare_values(row[:n_free], best[:n_free]) < 0`` for values in [0, 1), where the
    tolerance ``_TOL * max(1, |x|)`` is ``_TOL`` itself: the same decision without the calls."""
    for j in range(n_free):
        d = row[j] - best[j]
        if d < -_TOL:
            return True
        if d > _TOL:
            return False
    return False


def _smallest_rows(spans, fit: list, values: list) -> list:
    """Per site (letter, Z, first atom, end atom, n_free): the smallest free-value tuple among
    its atoms on the representative expression, scanning atoms in order (as ties within
    ``_TOL`` keep the earlier row, the scan order is part of the result). Free values lie in
    [0, 1) (reduced modulo 1, snapped below 1)."""
    sites = []
    for li, z, start, end, n_free in spans:
        if not n_free:
            sites.append((li, z, []))  # a fixed position: its letter was identified already
            continue
        best = None
        for a in range(start, end):
            if fit[a] and (best is None or _unit_less(values[a], best, n_free)):
                best = values[a]
        if best is None:
            raise EncodeError("symmetry_failed", "no atom of the orbit lies on its representative expression")
        sites.append((li, z, best[:n_free]))
    return sites


def _sort_sites(sites: list) -> list:
    """The sites sorted by (letter, Z, free values), free values equal within ``_TOL``.

    A plain key sort gives what the tolerant comparison gives unless two sites with the same
    (letter, Z) first differ by a nonzero amount within the tolerance; if any pair does, some
    pair adjacent in the key order does (the pairs between them share the same leading
    values), so checking neighbours decides whether the comparison sort must run instead."""
    ordered = sorted(sites, key=_site_value_key)
    for p, q in itertools.pairwise(ordered):
        if p[0] == q[0] and p[1] == q[1]:
            for x, y in zip(p[2], q[2], strict=True):
                if x != y:
                    if y - x <= _TOL:  # values in [0, 1): the tolerance is _TOL itself
                        return sorted(sites, key=functools.cmp_to_key(_compare_sites))
                    break
    return ordered


def _site_value_key(site) -> tuple:
    return site[0], site[1], site[2]


def describe(
    structure,
    *,
    symprec: float = 0.01,
    angle_tolerance: float = 5.0,
    max_sites: int = 15,
    symmetry: str = DEFAULT_SYMMETRY,
) -> Description:
    """The canonical description of an ordered periodic structure (raises ``EncodeError``).

    Symmetrising can reveal more symmetry than the finder saw in the raw input (a free value
    within tolerance of a special one), so the description is rebuilt into an exact cell and
    described again until it no longer changes: then decode followed by encode reproduces it.
    ``symmetry`` names the finder (``"moyopy"`` or ``"spglib"``); ``angle_tolerance``
    (degrees) applies to spglib only.
    """
    matrix, frac, numbers = _arrays(structure)
    options = (symprec, angle_tolerance, symmetry)
    description = _describe_cell(
        _standard_cell(matrix, frac, numbers, *options), matrix, frac, numbers, symprec, max_sites
    )
    # Always one more symmetry search, on the exactly symmetric cell that the description
    # spells: it can show a higher group (mp-18965: 164 -> 194), and a finder can find a
    # higher group for the same exact crystal in another cell (mp-560374). When it finds the
    # same group and cell content, describing it again gives this description (the values
    # were refined exactly, the normaliser's alternatives do not depend on the finder's cell),
    # so the second description is only built when something changed. Not so for triclinic
    # and monoclinic cells, whose equally reduced cells are searched near the finder's cell:
    # on special metrics (a = c, beta = 120) two starting cells can reach different sets.
    for _ in range(_MAX_PASSES):
        rebuilt = primitive_cell(description)
        cell = _standard_cell(*rebuilt, *options)
        if (
            cell.group == description.group
            and crystal_system(cell.group) not in ("triclinic", "monoclinic")
            and _cell_counts(cell) == description.counts()
        ):
            return description
        again = _describe_cell(cell, *rebuilt, symprec, max_sites, exact=True)
        if _same_description(description, again):
            return again
        description = again
    raise EncodeError("symmetry_failed", "symmetrisation does not settle on one description")


def _cell_counts(cell: _StandardCell) -> dict[int, int]:
    return dict(Counter(cell.types.tolist()))


_MAX_PASSES = 4


def _same_description(a: Description, b: Description, tol: float = 1e-6) -> bool:
    # Plain float arithmetic: the same IEEE operations as numpy's, without its per-call cost.
    if a.group != b.group or len(a.sites) != len(b.sites):
        return False
    for x, y in zip(a.sites, b.sites, strict=True):
        if (x.letter_index, x.z) != (y.letter_index, y.z):
            return False
        for u, v in zip(x.free, y.free, strict=True):
            d = abs(u - v)
            if min(d, 1.0 - d) > tol:
                return False
    # np.allclose(rtol=tol, atol=0): |a - b| <= tol * |b|, False for NaN.
    return all(abs(u - v) <= tol * abs(v) for u, v in zip(a.lattice, b.lattice, strict=True))


def _describe_cell(
    cell: _StandardCell, matrix, frac, numbers, symprec: float, max_sites: int, exact: bool = False
) -> Description:
    """One description: orbits of the finder's cell, refined values, canonical choice."""
    group = cell.group
    orbits = _orbits(cell)
    if len(orbits) > max_sites:
        raise EncodeError("too_many_sites", f"{len(orbits)} Wyckoff sites > {max_sites}")
    table = wyckoff_table()[group]
    counts: dict[int, int] = {}
    for li, z, _ in orbits:
        counts[z] = counts.get(z, 0) + table[li].multiplicity
    if len(counts) > MAX_ARITY:
        raise EncodeError("too_many_sites", f"{len(counts)} elements > {MAX_ARITY}")
    if max(counts.values()) > MAX_COUNT:
        raise EncodeError("too_many_sites", f"an element count {max(counts.values())} > {MAX_COUNT}")
    metric, positions = _refine(cell, matrix, frac, numbers, orbits, symprec, exact)
    frames = [(metric, positions, orbits)]
    system = crystal_system(group)
    if system == "monoclinic":
        frames = _monoclinic_frames(group, metric, positions, orbits)
    elif system == "triclinic":
        frames = _triclinic_frames(group, metric, positions, orbits)
    return _canonical(group, frames)


def lattice_matrix(group: int, values: tuple[float, ...]) -> np.ndarray:
    """Lattice vectors (rows) from the crystal system's parameters, a along x, b in the xy plane."""
    system = crystal_system(group)
    alpha = beta = gamma = 90.0
    if system == "cubic":
        a = b = c = values[0]
    elif system == "tetragonal":
        (a, c), b = values, values[0]
    elif system in ("trigonal", "hexagonal"):
        (a, c), b, gamma = values, values[0], 120.0
    elif system == "orthorhombic":
        a, b, c = values
    elif system == "monoclinic":
        a, b, c, beta = values
    else:
        a, b, c, alpha, beta, gamma = values
    ca, cb, cg = (math.cos(math.radians(x)) for x in (alpha, beta, gamma))
    sg = math.sin(math.radians(gamma))
    cz = math.sqrt(max(0.0, 1.0 - cb**2 - ((ca - cb * cg) / sg) ** 2))
    return np.array([[a, 0.0, 0.0], [b * cg, b * sg, 0.0], [c * cb, c * (ca - cb * cg) / sg, c * cz]])


def conventional_cell(description: Description) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lattice, fractional coordinates and atomic numbers of the described conventional cell."""
    all_ops = position_ops(description.group)
    coords, numbers = [], []
    for site in description.sites:
        ops = all_ops[site.letter_index]
        seed = np.zeros(3)
        seed[list(ops.free_axes)] = site.free
        points = np.mod(ops.ops[:, :, :3] @ seed + ops.ops[:, :, 3], 1.0)
        coords.append(points)
        numbers += [site.z] * len(points)
    return lattice_matrix(description.group, description.lattice), np.concatenate(coords), np.asarray(numbers)


@functools.cache
def _to_primitive_inverse(group: int) -> np.ndarray:
    return np.linalg.inv(group_setting(group).to_primitive)


def primitive_cell(description: Description) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The described crystal in a primitive cell (fewer atoms for spglib to search)."""
    matrix, frac, numbers = conventional_cell(description)
    to_primitive = group_setting(description.group).to_primitive
    if to_primitive is None:
        return matrix, frac, numbers
    prim_frac = np.mod(frac @ _to_primitive_inverse(description.group), 1.0)
    # Atoms related by a centring translation land on one primitive point: keep the first.
    diff = prim_frac[:, None, :] - prim_frac[None, :, :]
    diff -= np.rint(diff)
    close = np.all(np.abs(diff) < 1e-5, axis=-1)
    first = np.argmax(close, axis=1)  # index of the first atom each atom coincides with
    keep = first == np.arange(len(prim_frac))
    return to_primitive @ matrix, prim_frac[keep], numbers[keep]


@functools.cache
def _representatives(group: int) -> tuple[np.ndarray, np.ndarray, dict[int, tuple[int, ...]]]:
    """Every position's representative expression stacked (rotations transposed, translations),
    and the position indices of each multiplicity, in letter order."""
    all_ops = position_ops(group)
    rotation_t = np.stack([ops.ops[0, :, :3].T for ops in all_ops])
    translation = np.stack([ops.ops[0, :, 3] for ops in all_ops])
    by_multiplicity: dict[int, list[int]] = {}
    for position in wyckoff_table()[group]:
        by_multiplicity.setdefault(position.multiplicity, []).append(position.index)
    return rotation_t, translation, {m: tuple(ix) for m, ix in by_multiplicity.items()}


def _identify_letters(group: int, positions: np.ndarray, members: list[np.ndarray]) -> list[int]:
    """Index of the Wyckoff position each orbit (atom indices into ``positions``, the
    conventional cell) sits on: the first position of the orbit's size whose representative
    expression holds one of its points. One array pass tests every atom on every position."""
    rotation_t, translation, by_multiplicity = _representatives(group)
    on = None
    letters = []
    for idx in members:
        candidates = by_multiplicity.get(len(idx), ())
        if len(candidates) == 1:
            letters.append(candidates[0])  # an orbit lies on exactly one position: the only one that size
            continue
        if on is None and candidates:
            diff = positions @ rotation_t + translation[:, None, :] - positions
            on = (np.abs(diff - np.rint(diff)) < 1e-4).all(axis=-1).tolist()  # (positions, atoms)
        for index in candidates:
            row = on[index]
            if any(row[a] for a in idx.tolist()):
                letters.append(index)
                break
        else:
            raise EncodeError(
                "symmetry_failed", f"orbit of {len(idx)} atoms fits no Wyckoff position of {group}"
            )
    return letters


_REDUCED_TOL = 1e-5  # relative: cells this close to the most reduced one count as equally reduced


def _near_min(values: np.ndarray, scale: float) -> np.ndarray:
    """Which values are within the tolerance of the smallest (``scale`` sets the unit)."""
    return values <= values.min() + _REDUCED_TOL * scale


def _reframe(group: int, metric: np.ndarray, positions: np.ndarray, orbits, rows: np.ndarray):
    """The crystal in the cell whose vectors are ``rows`` (in the current cell's coordinates)."""
    moved = np.mod(positions @ np.linalg.inv(rows), 1.0)
    letters = _identify_letters(group, moved, [idx for _, _, idx in orbits])
    new_orbits = [(li, z, idx) for li, (_, z, idx) in zip(letters, orbits, strict=True)]
    return rows @ metric @ rows.T, moved, new_orbits


def _monoclinic_frames(group: int, metric: np.ndarray, positions: np.ndarray, orbits):
    """The standard-setting cells of a monoclinic crystal that are most reduced.

    A monoclinic group keeps its standard symbol under many changes of the a, c axes (cell
    choices), and a finder's pick among nearly equivalent ones depends on the input cell.
    Rule: among the changes of basis that keep the group's operations, keep the cells whose
    a^2 + c^2 is smallest, then those with beta closest to 90, then the obtuse ones, then
    those with the shortest a, each "within 1e-5 relative"; the canonical comparison picks
    among what remains. Tolerances instead of exact ties, so float noise in the input cannot
    drop an equally good cell.
    """
    changes = np.array(monoclinic_cell_changes(group))  # columns: new vectors in old coordinates
    rows = np.transpose(changes, (0, 2, 1))
    metrics = rows @ metric @ np.swapaxes(rows, 1, 2)
    a2, c2 = metrics[:, 0, 0], metrics[:, 2, 2]
    cos_beta = metrics[:, 0, 2] / np.sqrt(a2 * c2)
    keep = _near_min(a2 + c2, a2[0] + c2[0])
    keep &= _near_min(np.where(keep, np.abs(cos_beta), np.inf), 1.0)
    if (keep & (cos_beta <= _REDUCED_TOL)).any():
        keep &= cos_beta <= _REDUCED_TOL
    keep &= _near_min(np.where(keep, a2, np.inf), a2[keep].min())
    return [_reframe(group, metric, positions, orbits, rows[k]) for k in np.flatnonzero(keep)]


@functools.cache
def _short_vectors() -> tuple[np.ndarray, np.ndarray]:
    """The 26 lattice vectors with coefficients in -1..1, and every right-handed basis of three
    of them (index triples)."""
    vectors = np.array([v for v in itertools.product((-1, 0, 1), repeat=3) if any(v)], dtype=float)
    triples = np.array(list(itertools.product(range(len(vectors)), repeat=3)))
    dets = np.linalg.det(vectors[triples])
    return vectors, triples[np.abs(dets - 1.0) < 1e-6]


def _triclinic_frames(group: int, metric: np.ndarray, positions: np.ndarray, orbits):
    """The reduced cells of a triclinic crystal, in the order-independent sense of Niggli.

    Every right-handed basis of short vectors (coefficients -1..1 of the finder's reduced
    cell) is a candidate; kept are those with the smallest a^2 + b^2 + c^2, with
    a <= b <= c and with Niggli's sign rule (the dot products b.c, a.c, a.b all positive or
    all non-positive), each within 1e-5 relative. Several cells survive only when the lattice
    is (nearly) special; the canonical comparison picks among them, so two equally reduced
    cells can no longer give two sequences.
    """
    vectors, triples = _short_vectors()
    lengths = ((vectors @ metric) * vectors).sum(axis=1)
    sums = lengths[triples].sum(axis=1)
    scale = sums.min()
    candidates = triples[_near_min(sums, scale)]
    rows = vectors[candidates]  # (k, 3, 3): rows are the new vectors
    metrics = rows @ metric @ np.swapaxes(rows, 1, 2)
    a2, b2, c2 = metrics[:, 0, 0], metrics[:, 1, 1], metrics[:, 2, 2]
    dots = np.stack([metrics[:, 1, 2], metrics[:, 0, 2], metrics[:, 0, 1]], axis=1)
    tol = _REDUCED_TOL * scale
    keep = (a2 <= b2 + tol) & (b2 <= c2 + tol)
    keep &= (dots > -tol).all(axis=1) | (dots <= tol).all(axis=1)
    return [_reframe(group, metric, positions, orbits, rows[k]) for k in np.flatnonzero(keep)]


@functools.cache
def monoclinic_cell_changes(group: int) -> tuple[np.ndarray, ...]:
    """Proper integer changes of basis that keep b as the unique axis (a, c entries in -2..2,
    b -> +-b) and map the group's operations in its standard setting onto themselves
    (identity first)."""
    general = position_ops(group)[-1].ops
    reference = _op_set(general[:, :, :3], general[:, :, 3])
    changes = [np.eye(3)]
    for p11, p13, p31, p33 in itertools.product(range(-2, 3), repeat=4):
        det = p11 * p33 - p13 * p31
        if abs(det) != 1 or (p11, p13, p31, p33, det) == (1, 0, 0, 1, 1):
            continue
        change = np.array([[p11, 0, p13], [0, det, 0], [p31, 0, p33]], dtype=float)
        inverse = np.linalg.inv(change)
        rotations = np.einsum("ij,mjk,kl->mil", inverse, general[:, :, :3], change)
        translations = general[:, :, 3] @ inverse.T
        if _op_set(rotations, translations) == reference:
            changes.append(change)
    return tuple(changes)


def _op_set(rotations: np.ndarray, translations: np.ndarray) -> frozenset:
    t = np.rint(np.mod(translations, 1.0) * 24).astype(int) % 24
    r = np.rint(rotations).astype(int)
    return frozenset((tuple(r[i].ravel()), tuple(t[i])) for i in range(len(r)))


def _canonical(group: int, frames) -> Description:
    """The smallest description over the frames (cells) and the normaliser's alternatives."""
    setting = group_setting(group)
    table = wyckoff_table()[group]
    letter_maps = _normalizer_letter_indices(group)
    polar = list(setting.polar_axes)
    alternatives = []
    for frame, (metric, positions, orbits) in enumerate(frames):
        for op, letter_map in zip(setting.normalizer, letter_maps, strict=True):
            mapped = [(letter_map[li], z, idx) for li, z, idx in orbits]
            alternatives.append(
                (sorted((li, z) for li, z, _ in mapped), metric, positions, op, mapped, frame)
            )
    best_discrete = min(a[0] for a in alternatives)
    readers = _readers(group)
    lattices: dict[tuple[int, bytes], tuple[float, ...]] = {}

    def lattice(k: int) -> tuple[float, ...]:
        # Only needed when two candidates tie on every free value: computed on demand, once
        # per frame and rotation (operations that differ by a translation share it).
        _, metric, _, op, _, frame = alternatives[k]
        key = (frame, _op_key(op))
        if key not in lattices:
            inverse = _normalizer_inverses(group)[key[1]]
            lattices[key] = lattice_values(inverse.T @ metric @ inverse, group)
        return lattices[key]

    best = None  # (flat free values, alternative index, sites)
    for frame, (_, positions, orbits) in enumerate(frames):
        chosen = [k for k, alt in enumerate(alternatives) if alt[0] == best_discrete and alt[5] == frame]
        if not chosen:
            continue
        # The atoms of a frame are grouped by orbit in the same order for every alternative;
        # only the letters and the coordinates change with the normaliser's operation.
        order = np.concatenate([idx for _, _, idx in orbits])
        sizes = [len(idx) for _, _, idx in orbits]
        ends = np.cumsum(sizes).tolist()
        moved = np.stack([positions @ alternatives[k][3][:, :3].T + alternatives[k][3][:, 3] for k in chosen])
        letters = np.repeat([[li for li, _, _ in alternatives[k][4]] for k in chosen], sizes, axis=1)
        points = moved[:, order][:, None]  # (alternatives, shifts, atoms, 3)
        if polar:
            # Every origin along the polar axes that puts an atom of the first site at 0.
            anchors = np.array(
                [
                    np.concatenate([idx for li, z, idx in alternatives[k][4] if (li, z) == best_discrete[0]])
                    for k in chosen
                ]
            )
            shifts = -np.take_along_axis(moved, anchors[:, :, None], axis=1)  # (alternatives, shifts, 3)
            points = np.repeat(points, anchors.shape[1], axis=1)
            points[..., polar] += shifts[:, :, None, polar]
        fit, values = _free_value_rows(readers, letters, np.mod(points, 1.0))
        for k, fit_k, values_k in zip(chosen, fit.tolist(), values.tolist(), strict=True):
            spans = [
                (li, z, end - size, end, readers.n_free[li])
                for (li, z, _), size, end in zip(alternatives[k][4], sizes, ends, strict=True)
            ]
            for fit_s, values_s in zip(fit_k, values_k, strict=True):
                sites = _sort_sites(_smallest_rows(spans, fit_s, values_s))
                flat = [v for s in sites for v in s[2]]
                if best is None:
                    best = (flat, k, sites)
                    continue
                order_ = _compare_values(flat, best[0]) or _compare_values(lattice(k), lattice(best[1]))
                if order_ < 0:
                    best = (flat, k, sites)
    assert best is not None
    _, k, sites = best
    return Description(
        group=group,
        sites=tuple(Site(li, table[li].letter, z, tuple(values)) for li, z, values in sites),
        lattice=tuple(lattice(k)),
    )


@functools.cache
def _normalizer_letter_indices(group: int) -> tuple[tuple[int, ...], ...]:
    """Per normaliser coset: the image of each position, as letter indices."""
    table = wyckoff_table()[group]
    letter_index = {p.letter: p.index for p in table}
    return tuple(
        tuple(letter_index[letter_map[p.letter]] for p in table)
        for letter_map in group_setting(group).normalizer_letters
    )


def _op_key(op: np.ndarray) -> bytes:
    return op[:, :3].tobytes()


@functools.cache
def _normalizer_inverses(group: int) -> dict[bytes, np.ndarray]:
    """Inverse rotation part of each normaliser coset representative, by its bytes."""
    return {_op_key(op): np.linalg.inv(op[:, :3]) for op in group_setting(group).normalizer}


def _compare_sites(a, b) -> int:
    if (a[0], a[1]) != (b[0], b[1]):
        return -1 if (a[0], a[1]) < (b[0], b[1]) else 1
    return _compare_values(a[2], b[2])


# ---------------------------------------------------------------- tokens
def to_sequence(
    description: Description,
    properties: dict | None = None,
    *,
    augment_rng: np.random.Generator | None = None,
) -> TokenSequence:
    """Spell a description out as tokens (contract section 3 / docs/contracts.md section A)."""
    vocab = load_vocab()
    nan = math.nan
    tokens: list[int] = []
    values: list[float] = []
    ehull = (properties or {}).get("e_above_hull")
    if ehull is not None and math.isfinite(float(ehull)):
        tokens.append(vocab.ehull_low if float(ehull) <= EHULL_THRESHOLD else vocab.ehull_high)
        values.append(nan)
    counts = list(description.counts().items())
    sites = list(description.sites)
    if augment_rng is not None:
        counts = [counts[i] for i in augment_rng.permutation(len(counts))]
        sites = [sites[i] for i in augment_rng.permutation(len(sites))]
    tokens.append(vocab.arity(len(counts)))
    values.append(nan)
    for z, n in counts:
        tokens += [vocab.element(z), vocab.count(n)]
        values += [nan, nan]
    tokens.append(vocab.spacegroup(description.group))
    values.append(nan)
    for site in sites:
        tokens += [vocab.wyckoff(description.group, site.letter), vocab.element(site.z)]
        values += [nan, nan]
        tokens += [vocab.num] * len(site.free)
        values += list(site.free)
    tokens += [vocab.num] * len(description.lattice)
    values += list(description.lattice)
    tokens.append(vocab.end)
    values.append(nan)
    return TokenSequence(tokens, values)


def encode(
    structure,
    properties: dict | None = None,
    *,
    augment_rng: np.random.Generator | None = None,
    symprec: float = 0.01,
    angle_tolerance: float = 5.0,
    max_sites: int = 15,
    symmetry: str = DEFAULT_SYMMETRY,
) -> TokenSequence:
    """The canonical token sequence of a structure; ``EncodeError`` names why not.

    ``properties`` may hold ``e_above_hull`` (eV/atom): EHULL_LOW if <= 0.075, else
    EHULL_HIGH; absent or NaN gives no property token. ``augment_rng`` (numpy Generator)
    permutes element and site order for training; without it the sequence is canonical.
    """
    description = describe(
        structure, symprec=symprec, angle_tolerance=angle_tolerance, max_sites=max_sites, symmetry=symmetry
    )
    return to_sequence(description, properties, augment_rng=augment_rng)
