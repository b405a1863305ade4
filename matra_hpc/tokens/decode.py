"""Token sequence -> structure (conventional cell of the ITA standard setting).

``parse`` checks the sequence against the grammar of docs/contracts.md section A and the
Wyckoff tables, and raises ``DecodeError`` naming the first inconsistent token; ``decode``
then expands each orbit with pyxtal's operations and builds the crystal system's lattice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from matra_hpc.tokens.errors import DecodeError
from matra_hpc.tokens.sequence import TokenSequence
from matra_hpc.tokens.vocab import Vocab, load_vocab
from matra_hpc.tokens.wyckoff import crystal_system, lattice_parameter_names, position_ops

__all__ = ["decode", "parse", "ParsedSequence", "lattice_from_values"]

_COINCIDE = 1e-4  # fractional distance below which two orbit points are the same point


@dataclass
class ParsedSequence:
    properties: list[int]
    composition: list[tuple[int, int]]  # (Z, count) in sequence order
    group: int
    sites: list[tuple[int, int, tuple[float, ...], int]]  # (letter index, Z, free values, token index)
    lattice: tuple[float, ...]
    lattice_position: int


def _kind(vocab: Vocab, token: int) -> str:
    try:
        return vocab.kind(token)
    except ValueError:
        return "unknown"


class _Cursor:
    """A position in a sequence being parsed; errors name the token it points at."""

    def __init__(self, tokens: list[int], values, vocab: Vocab) -> None:
        self.tokens = tokens
        self.values = values
        self.vocab = vocab
        self.i = 0

    def need(self, what: str) -> int:
        """The current token (``DecodeError`` if the sequence ended before ``what``)."""
        if self.i >= len(self.tokens):
            raise DecodeError(len(self.tokens), f"sequence ends where {what} was expected")
        return self.tokens[self.i]

    def expect(self, kind: str, needed: str, expected: str, context: str = "bad block order: ") -> int:
        """The current token if it is of ``kind``; ``needed`` names it if the sequence ended,
        ``expected`` (after ``context``) if it is another kind."""
        t = self.need(needed)
        if _kind(self.vocab, t) != kind:
            raise DecodeError(self.i, f"{context}expected {expected}, got {_token_str(self.vocab, t)}")
        return t

    def num(self, what: str) -> float:
        """The value of the current ``<num>`` token, which must be finite."""
        t = self.need(what)
        if t != self.vocab.num:
            raise DecodeError(self.i, f"expected <num> for {what}, got {_token_str(self.vocab, t)}")
        v = float(self.values[self.i])
        if not math.isfinite(v):
            raise DecodeError(self.i, f"missing (non-finite) value for {what}")
        return v


def parse(seq: TokenSequence, vocab: Vocab | None = None) -> ParsedSequence:
    """Check a sequence token by token (raises ``DecodeError`` at the first bad token).

    Blocks in order (docs/contracts.md section A): property, composition, space group,
    sites, lattice, ``<end>``; each step reads one block and leaves the cursor after it."""
    vocab = vocab or load_vocab()
    tokens = [int(t) for t in seq.tokens]
    if len(seq.values) != len(tokens):
        raise DecodeError(min(len(tokens), len(seq.values)), "tokens and values differ in length")
    cursor = _Cursor(tokens, seq.values, vocab)
    properties = _read_properties(cursor)
    composition = _read_composition(cursor)
    group = vocab.spacegroup_of(cursor.expect("spacegroup", "a space group token", "a space group"))
    cursor.i += 1
    sites = _read_sites(cursor, group, composition)
    lattice_position = cursor.i
    lattice = []
    for name in lattice_parameter_names(group):
        lattice.append(cursor.num(f"lattice parameter {name}"))
        cursor.i += 1
    _read_end(cursor)
    return ParsedSequence(properties, composition, group, sites, tuple(lattice), lattice_position)


def _read_properties(cursor: _Cursor) -> list[int]:
    """The property block: at most one stability token."""
    properties: list[int] = []
    tokens = cursor.tokens
    while cursor.i < len(tokens) and _kind(cursor.vocab, tokens[cursor.i]) == "property":
        if properties:
            raise DecodeError(cursor.i, "more than one stability token in the property block")
        properties.append(tokens[cursor.i])
        cursor.i += 1
    return properties


def _read_composition(cursor: _Cursor) -> list[tuple[int, int]]:
    """The arity token, then that many (element, count) pairs, no element twice."""
    vocab = cursor.vocab
    arity = vocab.arity_of(cursor.expect("arity", "an arity token", "an arity token"))
    cursor.i += 1
    composition: list[tuple[int, int]] = []
    for _ in range(arity):
        t = cursor.expect("element", "an element of the composition", "an element")
        z = vocab.element_of(t)
        if any(z == zz for zz, _ in composition):
            raise DecodeError(cursor.i, f"element {_token_str(vocab, t)} appears twice in the composition")
        cursor.i += 1
        composition.append((z, vocab.count_of(cursor.expect("count", "an element count", "a count"))))
        cursor.i += 1
    return composition


def _read_sites(
    cursor: _Cursor, group: int, composition: list[tuple[int, int]]
) -> list[tuple[int, int, tuple[float, ...], int]]:
    """Sites (Wyckoff token, element, free values) until the composition's counts are placed."""
    remaining = dict(composition)
    used_fixed: set[int] = set()
    sites: list[tuple[int, int, tuple[float, ...], int]] = []
    while any(remaining.values()):
        site_at = cursor.i
        position, z, free = _read_site(cursor, group, remaining)
        if position.multiplicity > remaining[z]:
            raise DecodeError(
                site_at,
                f"{group}{position.letter} (multiplicity {position.multiplicity}) exceeds the "
                f"{remaining[z]} {_token_str(cursor.vocab, cursor.vocab.element(z))} atoms left by the counts",
            )
        if position.n_free == 0:
            if position.index in used_fixed:
                raise DecodeError(
                    site_at, f"{group}{position.letter} has no free parameter and is used twice"
                )
            used_fixed.add(position.index)
        remaining[z] -= position.multiplicity
        sites.append((position.index, z, tuple(free), site_at))
    return sites


def _read_site(cursor: _Cursor, group: int, remaining: dict[int, int]):
    """One site's tokens: its Wyckoff position (of ``group``), element (of the composition)
    and free values."""
    vocab = cursor.vocab
    t = cursor.need("a Wyckoff position (element counts are not all placed)")
    if _kind(vocab, t) != "wyckoff":
        raise DecodeError(
            cursor.i, f"expected a Wyckoff position, got {_token_str(vocab, t)}: counts not all placed"
        )
    position = vocab.wyckoff_of(group, t)
    if position is None:
        raise DecodeError(
            cursor.i, f"Wyckoff token {_token_str(vocab, t)} is not a position of space group {group}"
        )
    cursor.i += 1
    t = cursor.expect("element", "the element of the site", "the site's element", context="")
    z = vocab.element_of(t)
    if z not in remaining:
        raise DecodeError(cursor.i, f"element {_token_str(vocab, t)} is not in the composition")
    cursor.i += 1
    free = []
    for k in range(position.n_free):
        free.append(cursor.num(f"free parameter {k + 1} of {group}{position.letter}"))
        cursor.i += 1
    return position, z, free


def _read_end(cursor: _Cursor) -> None:
    """``<end>`` and nothing after it."""
    vocab = cursor.vocab
    t = cursor.need("<end>")
    if t != vocab.end:
        raise DecodeError(cursor.i, f"expected <end> after the lattice, got {_token_str(vocab, t)}")
    cursor.i += 1
    if cursor.i < len(cursor.tokens):
        raise DecodeError(cursor.i, f"tokens after <end>: {_token_str(vocab, cursor.tokens[cursor.i])}")


def _token_str(vocab: Vocab, t: int) -> str:
    try:
        return vocab.token_str(t)
    except ValueError:
        return f"<unknown id {t}>"


def lattice_from_values(group: int, values: tuple[float, ...]):
    """A pymatgen Lattice from the crystal system's free parameters (ValueError if unphysical)."""
    from pymatgen.core import Lattice

    system = crystal_system(group)
    if system == "cubic":
        (a,) = values
        params = (a, a, a, 90.0, 90.0, 90.0)
    elif system == "tetragonal":
        a, c = values
        params = (a, a, c, 90.0, 90.0, 90.0)
    elif system in ("trigonal", "hexagonal"):
        a, c = values
        params = (a, a, c, 90.0, 90.0, 120.0)
    elif system == "orthorhombic":
        a, b, c = values
        params = (a, b, c, 90.0, 90.0, 90.0)
    elif system == "monoclinic":
        a, b, c, beta = values
        params = (a, b, c, 90.0, beta, 90.0)
    else:
        params = tuple(values)
    lengths, angles = params[:3], params[3:]
    if not all(math.isfinite(x) and x > 0 for x in lengths):
        raise ValueError(f"non-physical lattice lengths {lengths}")
    if not all(math.isfinite(x) and 0 < x < 180 for x in angles):
        raise ValueError(f"non-physical lattice angles {angles}")
    lattice = Lattice.from_parameters(*params)
    volume = lattice.volume
    if not (math.isfinite(volume) and volume > 1e-3):
        raise ValueError(f"lattice parameters {params} give no cell (volume {volume})")
    return lattice


def decode(seq: TokenSequence):
    """The structure a sequence describes (conventional cell); ``DecodeError`` if inconsistent."""
    from pymatgen.core import Structure

    parsed = parse(seq)
    group = parsed.group
    all_ops = position_ops(group)
    coords: list[np.ndarray] = []
    species: list[int] = []
    seen: list[np.ndarray] = []
    for letter_index, z, free, site_at in parsed.sites:
        ops = all_ops[letter_index]
        seed = np.zeros(3)
        seed[list(ops.free_axes)] = np.asarray(free, dtype=float)
        points = np.mod(ops.ops[:, :, :3] @ seed + ops.ops[:, :, 3], 1.0)
        diff = points[:, None, :] - points[None, :, :]
        diff -= np.rint(diff)
        close = np.all(np.abs(diff) < _COINCIDE, axis=-1)
        if close.sum() != len(points):
            raise DecodeError(
                site_at, "free values put the orbit on a special position (its points coincide)"
            )
        if seen:
            earlier = np.concatenate(seen)
            d = points[:, None, :] - earlier[None, :, :]
            d -= np.rint(d)
            if np.any(np.all(np.abs(d) < _COINCIDE, axis=-1)):
                raise DecodeError(site_at, "site coincides with an atom of an earlier site")
        seen.append(points)
        coords.append(points)
        species += [z] * len(points)
    try:
        lattice = lattice_from_values(group, parsed.lattice)
    except ValueError as exc:
        raise DecodeError(parsed.lattice_position, str(exc)) from None
    return Structure(lattice, species, np.concatenate(coords), coords_are_cartesian=False)
