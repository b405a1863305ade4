"""Per-structure checks of a sampled sequence (paper Fig. 2): decode, bonds, space group, hash.

Every sampled row gets a ``StructureCheck``: whether it decodes (a sequence cut by the length
guard never does), whether no two atoms sit closer than ``min_distance`` (periodic images
included), whether spglib finds the sampled space group in the decoded structure, and the
prototype hash of ``encode(decode(sequence))`` (the duplicate buckets). Nothing fails silently:
an exception while decoding or encoding is recorded as text in the row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DEFAULT_MIN_DISTANCE = 0.7
"""Angstrom; the paper's collision threshold."""
SYMPREC = 0.01
ANGLE_TOLERANCE = 5.0


@dataclass
class StructureCheck:
    complete: bool
    decodes: bool
    bonds_ok: bool
    spacegroup_ok: bool
    sampled_spacegroup: int
    """The group token of the sequence (0 when none was sampled)."""
    found_spacegroup: int
    """What spglib finds in the decoded structure (0 when it cannot)."""
    prototype_hash: str
    """'' when the decoded structure does not encode (see ``error``)."""
    error: str
    """'' or ``Kind: message`` of the decode/encode failure."""
    structure: object | None
    """The decoded pymatgen Structure (None when it does not decode)."""
    formula: str = ""
    cif: str = ""
    n_sites_primitive: int = 0


def sampled_spacegroup(tokens: list[int]) -> int:
    """The space group token of a sequence, 0 when it has none (e.g. cut before it)."""
    from matra_hpc.tokens import load_vocab

    return load_vocab().spacegroup_in(tokens)


# Densest packing of equal spheres (Kepler): no crystal fills more than pi / sqrt(18) of space.
_MAX_PACKING = math.pi / math.sqrt(18.0)


def min_distance_ok(structure, min_distance: float) -> bool:
    """No pair of atoms (a site and its own periodic images included) closer than min_distance.

    A cell with less volume per atom than spheres of diameter min_distance can fill must hold
    such a pair: answered without the neighbour search, which on an absurd sample (hundreds of
    atoms in a cubic angstrom) took seconds per row."""
    sphere = math.pi / 6.0 * min_distance**3
    if structure.volume < len(structure) * sphere / _MAX_PACKING:
        return False
    lattice = structure.lattice.matrix
    widths = structure.volume / np.linalg.norm(np.cross(lattice[[1, 2, 0]], lattice[[2, 0, 1]]), axis=1)
    if widths.min() >= 2 * min_distance:
        return _min_image_distance_ok(structure.frac_coords, lattice, min_distance)
    centers, _, _, distances = structure.get_neighbor_list(r=min_distance)
    return len(centers) == 0


_IMAGES = np.array([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)], dtype=np.float64)


def _min_image_distance_ok(frac: np.ndarray, lattice: np.ndarray, min_distance: float, chunk: int = 64) -> bool:
    """``min_distance_ok`` for a cell at least 2 min_distance wide in every direction: a pair
    closer than min_distance has fractional separation |f_i| <= min_distance / width_i <= 1/2
    along each axis, so it is among the 27 images next to the wrapped difference, and no atom
    is that close to its own images. What the cell-list search of a huge sparse cell (a sampled
    300 A cube of hundreds of atoms: seconds per row) answers in milliseconds."""
    n = len(frac)
    shifts = _IMAGES @ lattice  # (27, 3)
    for start in range(0, n, chunk):
        diff = frac[start : start + chunk, None, :] - frac[None, :, :]  # (c, n, 3)
        diff -= np.rint(diff)
        cart = diff @ lattice  # (c, n, 3)
        d2 = ((cart[:, :, None, :] + shifts[None, None, :, :]) ** 2).sum(axis=-1).min(axis=-1)  # (c, n)
        rows = np.arange(start, min(start + chunk, n))
        d2[rows - start, rows] = np.inf  # an atom and itself
        if (d2 < min_distance**2).any():
            return False
    return True


def check_sequence(
    tokens: list[int],
    values: list[float],
    complete: bool,
    *,
    min_distance: float = DEFAULT_MIN_DISTANCE,
    with_cif: bool = True,
) -> StructureCheck:
    """Decode a sampled sequence and check it; every failure lands in the result, none raises.

    (pymatgen's electronegativity warnings for noble gases are silenced once, in ``matra_hpc``.)
    """
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    from matra_hpc.tokens import TokenSequence, decode, encode, prototype_hash

    group = sampled_spacegroup(tokens)
    result = StructureCheck(
        complete=complete, decodes=False, bonds_ok=False, spacegroup_ok=False, sampled_spacegroup=group,
        found_spacegroup=0, prototype_hash="", error="", structure=None,
    )
    if not complete:
        result.error = "LengthGuard: cut before <end>"
        return result
    try:
        structure = decode(TokenSequence(tokens=list(tokens), values=list(values)))
    except Exception as exc:  # recorded in the row and counted as not decoding, never hidden
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    result.decodes = True
    result.structure = structure
    result.formula = structure.composition.reduced_formula
    result.bonds_ok = min_distance_ok(structure, min_distance)
    try:
        analyzer = SpacegroupAnalyzer(structure, symprec=SYMPREC, angle_tolerance=ANGLE_TOLERANCE)
        result.found_spacegroup = int(analyzer.get_space_group_number())
        result.n_sites_primitive = len(analyzer.find_primitive())
    except Exception as exc:  # spglib gives up on some colliding structures
        result.error = f"{type(exc).__name__}: {exc}"
    result.spacegroup_ok = result.found_spacegroup == group and group > 0
    try:
        result.prototype_hash = prototype_hash(encode(structure))
    except Exception as exc:
        reason = getattr(exc, "reason", None)
        result.error = result.error or f"{type(exc).__name__}: {reason or exc}"
    if with_cif:
        from pymatgen.io.cif import CifWriter

        result.cif = str(CifWriter(structure))
    return result


def structure_arrays(structure) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lattice 3x3, frac_coords n x 3, atomic numbers n) of a decoded structure."""
    lattice = np.asarray(structure.lattice.matrix, dtype=np.float64)
    frac = np.asarray(structure.frac_coords, dtype=np.float64).reshape(-1, 3)
    numbers = np.asarray(structure.atomic_numbers, dtype=np.int16)
    return lattice, frac, numbers


def nan_lattice() -> np.ndarray:
    return np.full((3, 3), math.nan)
