"""The token grammar: which tokens may come next, so that every sampled sequence is a crystal.

Layout (docs/contracts.md section A)::

    [EHULL_*]  ARITY_k  (El N_c)*k  SG_g  (W El <num>*n_free)*  <num>*n_lattice  <end>

:class:`Grammar` keeps one small :class:`GrammarState` per prefix and answers, for a batch of
prefixes, a boolean mask over the vocabulary (:meth:`Grammar.masks`). Elements and sites may
come in any order (augmentation permutes them), each element once; sites end when every
element's count is placed, and the lattice parameters of the group's crystal system follow.

No dead ends
------------
Every token the mask allows can be completed to a whole sequence. Element identities never
matter for that, only counts do, and the question "can these counts still be placed in group G
with the unused Wyckoff positions and the sites left" is answered *exactly* by the tables of
:mod:`matra_hpc.tokens._reachability` (fixed positions collapsed into per-multiplicity classes,
per-group ``min_sites[count, pool]`` tables, min-plus convolution over elements, memoised per
sorted counts). Concretely:

* ``ARITY_k`` needs some allowed group that fits k elements (one site each at least);
* a count ``c`` for the j-th element needs some allowed group in which the counts so far plus
  ``c`` fit with one site left for each of the ``k - j`` elements still to come (the general
  position has free parameters, so it can always take them); one vectorised pass over all 230
  groups and all 512 counts, cached per sorted prefix;
* ``SG_g`` needs all counts to fit in g within ``max_sites``;
* a Wyckoff token needs an element whose remaining count can take its multiplicity such that
  everything left still fits in the pool and the sites left; the element after it likewise.
  A fixed position (no free parameter) is used at most once per structure.

Conditions (:mod:`matra_hpc.tokens.conditions`) narrow these same masks: forced property token,
element set, composition multiples, allowed groups, required Wyckoff positions (which are
reserved out of the pool and must be placed before the sites end).

Continuous values (:meth:`Grammar.value_range`)
-----------------------------------------------
* free coordinates: ``[0, 1)`` (the contract wraps them there);
* lattice lengths: ``[LENGTH_MIN, LENGTH_MAX]`` = [1, 300] Angstrom. The lower bound is below
  any real lattice (the shortest conventional axis in the demo set is 2.4 A); the upper bound
  leaves room for long hexagonal-axes c axes of rhombohedral layered compounds (113 A in the
  demo set, more in larger databases);
* monoclinic beta and triclinic alpha, beta: ``[ANGLE_MIN, ANGLE_MAX]`` = [30, 150] degrees
  (the standardised cells of the demo set stay within 60..135); triclinic gamma, given alpha
  and beta, also within ``(|alpha - beta|, min(alpha + beta, 360 - alpha - beta))`` shrunk by
  ``ANGLE_MARGIN`` degrees on each side: exactly the condition for three unit vectors with
  these pairwise angles to span a positive volume. Within the bounds above this interval is
  never empty.

The sampler clamps or redraws into the range; :meth:`Grammar.advance` refuses values outside it.
A free coordinate must also keep the site's orbit points apart and away from earlier atoms
(``COINCIDE_TOL``): values within a hair of a special position (e.g. x = 0.49999 on a mirror
plane) would decode to overlapping atoms. :meth:`Grammar.value_allowed` says so before
``advance``; the refused values are thin slabs, so a redraw from the range succeeds. A value is
judged with the site's still-missing free values set to generic numbers, so whatever was
accepted can always be completed.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

from matra_hpc.errors import MatraError
from matra_hpc.tokens._reachability import reach_tables
from matra_hpc.tokens.conditions import Condition, ResolvedCondition, resolve_condition
from matra_hpc.tokens.sequence import TokenSequence
from matra_hpc.tokens.vocab import Vocab, load_vocab
from matra_hpc.tokens.wyckoff import lattice_parameter_names, position_ops, wyckoff_table

__all__ = [
    "COINCIDE_TOL",
    "ANGLE_MARGIN",
    "ANGLE_MAX",
    "ANGLE_MIN",
    "LENGTH_MAX",
    "LENGTH_MIN",
    "Grammar",
    "GrammarError",
    "GrammarState",
]

LENGTH_MIN, LENGTH_MAX = 1.0, 300.0
# Fractional distance under which two atoms count as one: four times decode's tolerance (room
# for the factor 2 of the shortcuts in ``_orbit_clear``), so decode never sees coinciding atoms.
COINCIDE_TOL = 4e-4
# stand-ins for free values not drawn yet (two, so one unlucky coincidence cannot refuse a value)
_GENERIC_FREE = ((0.1234567, 0.3571113, 0.6180339), (0.7071067, 0.2718281, 0.4142135))
ANGLE_MIN, ANGLE_MAX = 30.0, 150.0
ANGLE_MARGIN = 1.0

# phases of a prefix: what the next token is
_START, _ELEMENT, _COUNT, _GROUP, _SITE, _SITE_ELEMENT, _COORD, _LATTICE, _END, _DONE = range(10)
_PHASE_NAMES = (
    "property or arity",
    "element",
    "count",
    "space group",
    "Wyckoff position or lattice",
    "site element",
    "free coordinate",
    "lattice parameter",
    "<end>",
    "nothing (sequence complete)",
)


class GrammarError(MatraError, ValueError):
    """A token or value that the grammar does not allow at this point of the sequence."""


class GrammarState:
    """One prefix, as the grammar needs it. Mutated in place by :meth:`Grammar.advance`."""

    __slots__ = (
        "phase",
        "length",
        "has_property",
        "arity",
        "elements",
        "counts",
        "group",
        "remaining",
        "used_fixed",
        "avail",
        "n_sites",
        "required_left",
        "pending",
        "coords_left",
        "lattice_names",
        "lattice_values",
        "site_values",
        "points",
        "sites",
        "_key",
        "_value_ok",
    )

    def __init__(self) -> None:
        self.phase = _START
        self.length = 0
        self.has_property = False
        self.arity = 0
        self.elements: list[int] = []  # atomic numbers, in sequence order
        self.counts: list[int] = []
        self.group = 0
        self.remaining: list[int] = []  # per element, atoms not yet placed on sites
        self.used_fixed = 0  # bitmask over the group's position indices
        self.avail = 0  # index of the unused, unreserved fixed pool (see _reachability)
        self.n_sites = 0
        self.required_left: tuple[int, ...] = ()
        self.pending = -1  # position index waiting for its element
        self.coords_left = 0
        self.lattice_names: tuple[str, ...] = ()
        self.lattice_values: list[float] = []
        self.site_values: list[float] = []  # free values of the site being written
        self.points: list[np.ndarray] = []  # fractional orbit points of the finished sites
        self.sites: list[tuple[int, int]] = []  # (position index, element index) of every site
        self._key: tuple | None = None
        self._value_ok = math.nan  # the last value value_allowed passed at this length

    def copy(self) -> GrammarState:
        new = GrammarState.__new__(GrammarState)
        for name in self.__slots__:
            value = getattr(self, name)
            setattr(new, name, list(value) if isinstance(value, list) else value)
        return new

    def __repr__(self) -> str:
        return (
            f"GrammarState(expects={_PHASE_NAMES[self.phase]!r}, length={self.length}, "
            f"elements={self.elements}, counts={self.counts}, group={self.group}, "
            f"remaining={self.remaining}, n_sites={self.n_sites})"
        )


# Lattice parameters and free values with no relation between them: a site block's symmetry at
# these values is the least any of its realisations has (see site_block_group).
_GENERIC_LATTICE = {"a": 4.1307, "b": 5.3719, "c": 6.7141, "alpha": 81.31, "beta": 97.73, "gamma": 103.87}
_GOLDEN = 0.6180339887498949


def site_block_group(group: int, sites: Sequence[tuple[int, int]]) -> int:
    """The space group number spglib finds for a site block of ``group`` (sites: (position index,
    element index)) placed with generic free values in a generic lattice of its crystal system.

    Every operation of ``group`` maps the block onto itself whatever its values; an operation
    that holds at generic values holds at all values (it maps atoms to atoms through affine
    functions of the values), so when this is not ``group`` no realisation of the block has
    exactly ``group``: the crystal would be encoded in the larger group (e.g. Fm-3m 4a + 4b of
    one element is a primitive cubic cell of half the edge, Pm-3m). Encodings of real crystals
    always give ``group`` back.
    """
    import spglib

    from matra_hpc.tokens.decode import lattice_from_values

    ops = position_ops(group)
    lattice = lattice_from_values(group, tuple(_GENERIC_LATTICE[n] for n in lattice_parameter_names(group)))
    frac, numbers = [], []
    for k, (p, element) in enumerate(sites):
        pos = ops[p]
        seed = np.zeros(3)
        # distinct irrational-looking values per site and axis: no two sites share a value
        seed[list(pos.free_axes)] = [((k + 1) * _GOLDEN + 0.2913 * (axis + 1)) % 1.0 for axis in pos.free_axes]
        frac.append(np.mod(pos.ops[:, :, :3] @ seed + pos.ops[:, :, 3], 1.0))
        numbers += [element + 1] * len(pos.ops)
    cell = (np.asarray(lattice.matrix), np.concatenate(frac), np.asarray(numbers))
    dataset = spglib.get_symmetry_dataset(cell, symprec=1e-3)
    return 0 if dataset is None else int(dataset.number)


def _earlier_points(state: GrammarState) -> np.ndarray:
    """All atoms of the finished sites (n, 3); the list is merged into one array in place, so
    the checks of every later value do not concatenate it again."""
    if len(state.points) > 1:
        state.points[:] = [np.concatenate(state.points)]
    return state.points[0]


@functools.cache
def _position_pins_group(group: int, position: int) -> bool:
    """Whether one generic orbit of this position alone has exactly ``group`` (e.g. any general
    position; not 4a of Fm-3m, whose lone orbit is a primitive cubic lattice)."""
    return site_block_group(group, ((position, 0),)) == group


class Grammar:
    """Next-token masks over ``vocab`` for prefixes of token sequences; see the module docstring."""

    def __init__(
        self,
        vocab: Vocab | None = None,
        *,
        max_sites: int = 15,
        condition: Condition | None = None,
        canonical_sites: bool = True,
    ) -> None:
        self.vocab = vocab if vocab is not None else load_vocab()
        self.max_sites = max_sites
        self.canonical_sites = canonical_sites
        self._canonical: dict[tuple, bool] = {}
        self._canonical_ids: dict[tuple, np.ndarray] = {}
        self.condition = condition
        self.resolved: ResolvedCondition = resolve_condition(condition, max_sites=max_sites)
        self._tables = reach_tables()
        v = self.vocab
        self._table = wyckoff_table()
        self._ops = {g: position_ops(g) for g in self._table}
        # per group: the token of each position (letter order) and back
        self._pos_tokens = {
            g: np.array([v.wyckoff(g, p.letter) for p in ps]) for g, ps in self._table.items()
        }
        self._pos_of_token = {
            g: {int(t): i for i, t in enumerate(toks)} for g, toks in self._pos_tokens.items()
        }
        group_index = {int(g): i for i, g in enumerate(self._tables.group_ids)}
        # allowed groups without required positions, aligned with the tables' group_ids; the
        # few with required positions go through the slower exact path one by one
        self._plain_groups = np.zeros(len(self._tables.group_ids), dtype=bool)
        for g in self.resolved.groups:
            self._plain_groups[group_index[g]] = g not in self.resolved.required
        self._required_groups = tuple(g for g in self.resolved.groups if g in self.resolved.required)
        self._cache: dict[tuple, np.ndarray] = {}

    # ------------------------------------------------------------------ public API
    def new_states(self, n: int) -> list[GrammarState]:
        return [GrammarState() for _ in range(n)]

    def max_length(self) -> int:
        """Upper bound on a sequence's length, ``<end>`` included."""
        return 1 + 1 + 2 * self.vocab.max_arity + 1 + self.max_sites * (2 + 3) + 6 + 1

    def is_complete(self, state: GrammarState) -> bool:
        return state.phase == _DONE

    def mask(self, state: GrammarState) -> np.ndarray:
        out = np.zeros(self.vocab.size, dtype=bool)
        out[self._allowed(state)] = True
        return out

    def masks(self, states: Sequence[GrammarState]) -> np.ndarray:
        """(B, V) bool: row i is the set of tokens allowed after prefix ``states[i]``."""
        out = np.zeros((len(states), self.vocab.size), dtype=bool)
        if not states:
            return out
        ids = [self._allowed(s) for s in states]
        lengths = np.fromiter((len(a) for a in ids), dtype=np.int64, count=len(ids))
        rows = np.repeat(np.arange(len(states)), lengths)
        out[rows, np.concatenate(ids)] = True
        return out

    def value_range(self, state: GrammarState) -> tuple[float, float]:
        """Range of the next ``<num>``: ``[lo, hi)`` for coordinates, ``[lo, hi]`` for the lattice."""
        if state.phase == _COORD:
            return 0.0, 1.0
        if state.phase != _LATTICE:
            raise GrammarError(f"no continuous value expected here (expecting {_PHASE_NAMES[state.phase]})")
        name = state.lattice_names[len(state.lattice_values)]
        if name in ("a", "b", "c"):
            return LENGTH_MIN, LENGTH_MAX
        if name == "gamma":  # triclinic: alpha and beta are known
            alpha, beta = state.lattice_values[3], state.lattice_values[4]
            lo = max(ANGLE_MIN, abs(alpha - beta) + ANGLE_MARGIN)
            hi = min(ANGLE_MAX, alpha + beta - ANGLE_MARGIN, 360.0 - alpha - beta - ANGLE_MARGIN)
            return lo, hi
        return ANGLE_MIN, ANGLE_MAX

    def value_kind(self, state: GrammarState) -> str | None:
        """Kind of the next ``<num>``: ``coordinate``, ``length`` or ``angle``; None when the next
        token is not a value (the model is told what it predicts, see model/slots.py)."""
        if state.phase == _COORD:
            return "coordinate"
        if state.phase != _LATTICE:
            return None
        name = state.lattice_names[len(state.lattice_values)]
        return "length" if name in ("a", "b", "c") else "angle"

    def site_context(self, state: GrammarState) -> tuple[int, int, tuple[float, ...], np.ndarray] | None:
        """When a free coordinate comes next: (group, position index in letter order, the site's
        free values so far, the atoms of the finished sites (n, 3) fractional); else None.

        What the model's coordinate repulsion reads (``model/slots.py``), from the state the
        grammar keeps anyway instead of walking the prefix again at every value.
        """
        if state.phase != _COORD:
            return None
        points = _earlier_points(state) if state.points else np.zeros((0, 3))
        return state.group, state.pending, tuple(state.site_values), points

    def advance(self, state: GrammarState, token: int, value: float = math.nan) -> None:
        """Append ``token`` (and its value, for ``<num>``) to the prefix; GrammarError if illegal."""
        token = int(token)
        ids = self._allowed(state)
        at = int(np.searchsorted(ids, token))
        if at == len(ids) or ids[at] != token:
            raise GrammarError(
                f"token {self._token_str(token)} not allowed at position {state.length} "
                f"(expecting {_PHASE_NAMES[state.phase]})"
            )
        v = self.vocab
        phase = state.phase
        state._key = None
        if phase in (_COORD, _LATTICE):
            self._check_value(state, value)
        state._value_ok = math.nan
        state.length += 1
        if phase == _START:
            if token in (v.ehull_low, v.ehull_high):
                state.has_property = True
            else:
                state.arity = v.arity_of(token)
                state.phase = _ELEMENT
        elif phase == _ELEMENT:
            state.elements.append(v.element_of(token))
            state.phase = _COUNT
        elif phase == _COUNT:
            state.counts.append(v.count_of(token))
            state.phase = _ELEMENT if len(state.counts) < state.arity else _GROUP
        elif phase == _GROUP:
            g = v.spacegroup_of(token)
            reach = self._tables.groups[g]
            state.group = g
            state.remaining = list(state.counts)
            state.required_left = self.resolved.required.get(g, ())
            state.avail = reach.avail_index(state.required_left)
            state.phase = _SITE
        elif phase == _SITE:
            state.pending = self._pos_of_token[state.group][token]
            state.phase = _SITE_ELEMENT
        elif phase == _SITE_ELEMENT:
            self._place(state, state.elements.index(v.element_of(token)))
        else:  # <num> or <end>
            if phase == _COORD:
                state.site_values.append(float(value))
                state.coords_left -= 1
                if state.coords_left == 0:
                    state.points.append(self._orbit(state.group, state.pending, state.site_values))
                    state.pending = -1
                    state.phase = _SITE if any(state.remaining) else self._start_lattice(state)
            elif phase == _LATTICE:
                state.lattice_values.append(float(value))
                if len(state.lattice_values) == len(state.lattice_names):
                    state.phase = _END
            elif phase == _END:
                state.phase = _DONE

    def accepts(self, seq: TokenSequence) -> bool:
        """True when ``seq`` is a whole sequence the grammar allows, token by token."""
        return self.first_rejection(seq) is None

    def first_rejection(self, seq: TokenSequence) -> tuple[int, str] | None:
        """``(index, reason)`` of the first token the grammar refuses, or None if ``seq`` is accepted."""
        if len(seq.tokens) != len(seq.values):
            return 0, "tokens and values differ in length"
        state = GrammarState()
        for i, (token, value) in enumerate(zip(seq.tokens, seq.values, strict=True)):
            if token != self.vocab.num and not math.isnan(value):
                return i, f"value {value} given for a token that is not <num>"
            try:
                self.advance(state, token, value)
            except GrammarError as exc:
                return i, str(exc)
        if state.phase != _DONE:
            return len(seq.tokens), f"sequence ends early (expecting {_PHASE_NAMES[state.phase]})"
        return None

    # ------------------------------------------------------------------ internals
    def _token_str(self, token: int) -> str:
        try:
            return self.vocab.token_str(token)
        except ValueError:
            return f"id {token}"

    def _start_lattice(self, state: GrammarState) -> int:
        state.lattice_names = lattice_parameter_names(state.group)
        state.lattice_values = []
        return _LATTICE

    def value_allowed(self, state: GrammarState, value: float) -> bool:
        """Whether ``value`` may be the next ``<num>``: inside :meth:`value_range`, and for a free
        coordinate also away from special positions and from earlier atoms (see ``COINCIDE_TOL``).

        The sampler redraws a value this refuses; the refused set is a few thin slabs, so a
        redraw from the same range succeeds almost surely.
        """
        lo, hi = self.value_range(state)
        value = float(value)
        if state.phase == _LATTICE:
            return lo <= value <= hi
        if not lo <= value < hi:
            return False
        free = [*state.site_values, value]
        n_free = self._tables.groups[state.group].n_free[state.pending]
        # the remaining free values are still to be drawn: fine if a generic choice works
        ok = any(
            self._orbit_clear(
                state, self._orbit(state.group, state.pending, free + list(g[len(free) : n_free]))
            )
            for g in _GENERIC_FREE
        )
        if ok:
            state._value_ok = value  # advance() need not redo the check
        return ok

    def _check_value(self, state: GrammarState, value: float) -> None:
        if state.phase == _COORD and value == state._value_ok:
            return
        if not self.value_allowed(state, value):
            lo, hi = self.value_range(state)
            bracket = ")" if state.phase == _COORD else "]"
            where = f"value {value} at position {state.length}"
            if lo <= value < hi or (state.phase == _LATTICE and lo <= value <= hi):
                raise GrammarError(f"{where} puts the site on a special position or on an earlier atom")
            raise GrammarError(f"{where} outside [{lo}, {hi}{bracket}")

    def _orbit(self, group: int, p: int, free: Sequence[float]) -> np.ndarray:
        ops = self._ops[group][p]
        seed = np.zeros(3)
        seed[list(ops.free_axes)] = free
        return np.mod(ops.ops[:, :, :3] @ seed + ops.ops[:, :, 3], 1.0)

    @staticmethod
    def _orbit_clear(state: GrammarState, points: np.ndarray) -> bool:
        """No two orbit points coincide and none coincides with an earlier site's atom.

        Every listed orbit is the group's images of its first point (checked for all 1,731
        positions in the tests), so two atoms of it, or of it and an earlier orbit, can meet only
        if the first point meets another atom; the group's rotations stretch fractional
        distances by at most 2, which ``COINCIDE_TOL`` (4x decode's) allows for. O(atoms).
        """
        d = points[1:] - points[0]
        d -= np.rint(d)
        if np.any(np.abs(d).max(axis=-1) < COINCIDE_TOL):
            return False
        if state.points:
            earlier = _earlier_points(state)
            d = earlier - points[0]
            d -= np.rint(d)
            if np.any(np.abs(d).max(axis=-1) < COINCIDE_TOL):
                return False
        return True

    def _place(self, state: GrammarState, element_index: int) -> None:
        g, p = state.group, state.pending
        reach = self._tables.groups[g]
        state.remaining[element_index] -= reach.mults[p]
        state.n_sites += 1
        state.sites.append((p, element_index))
        if p in state.required_left:
            left = list(state.required_left)
            left.remove(p)
            state.required_left = tuple(left)  # a reserved fixed position was never in the pool
        elif reach.position_class[p] >= 0:
            state.avail -= reach.strides[reach.position_class[p]]
        if reach.position_class[p] >= 0:
            state.used_fixed |= 1 << p
        state.coords_left = reach.n_free[p]
        state.site_values = []
        if state.coords_left:
            state.phase = _COORD  # ``pending`` stays: the values belong to this position
            return
        state.points.append(self._orbit(g, p, ()))
        state.pending = -1
        if any(state.remaining):
            state.phase = _SITE
        else:
            state.phase = self._start_lattice(state)

    def _key(self, s: GrammarState) -> tuple:
        ph = s.phase
        if ph == _START:
            return (ph, s.has_property)
        if ph == _ELEMENT:
            return (ph, s.arity, tuple(sorted(s.elements)))
        if ph == _COUNT:
            if self.resolved.reduced is None:  # element identity is irrelevant to the counts
                return (ph, s.arity, tuple(sorted(s.counts)))
            return (ph, s.arity, tuple(sorted(s.counts)), s.elements[-1], s.elements[0])
        if ph == _GROUP:
            return (ph, tuple(sorted(s.counts)))
        if ph == _SITE:
            return (
                ph,
                s.group,
                tuple(sorted(r for r in s.remaining if r)),
                s.used_fixed,
                s.n_sites,
                s.required_left,
            )
        if ph == _SITE_ELEMENT:
            return (
                ph,
                s.group,
                s.pending,
                tuple(s.remaining),
                tuple(s.elements),
                s.used_fixed,
                s.n_sites,
                s.required_left,
            )
        if ph in (_COORD, _LATTICE):
            return (_COORD,)
        return (ph,)

    def _allowed(self, state: GrammarState) -> np.ndarray:
        """Sorted ids of the allowed tokens, cached per prefix key (int32, at most ~2 kB each)."""
        key = state._key
        if key is None:
            key = state._key = self._key(state)
        hit = self._cache.get(key)
        if hit is None:
            hit = np.asarray(sorted(self._compute(state)), dtype=np.int32)
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[key] = hit
        if self.canonical_sites and state.phase == _SITE:
            hit = self._canonical_positions(state, hit)
        return hit

    # -- canonical site blocks ---------------------------------------------------------
    def _canonical_positions(self, state: GrammarState, ids: np.ndarray) -> np.ndarray:
        """Drop the position tokens after which every way to place the last element's atoms gives
        a set of sites invariant under a larger group than the sampled one, whatever the free
        values (``site_block_group``): such a sequence is never the encoding of a crystal.

        Applies once a single element is left to place (the end of the site block; before that a
        later site on a general position can break any extra symmetry, and the search over
        several elements' placements would cost too much per step). The last element's
        placements are searched (fixed positions at most once, within the site budget, at most
        ``_COMPLETION_NODES`` steps of the search, beyond which a position is not refused), and a
        position is only dropped when another stays allowed: never a dead end. Not with
        required Wyckoff positions (conditions), which this search does not place.
        """
        nonzero = [i for i, r in enumerate(state.remaining) if r]
        if len(nonzero) != 1 or state.required_left:
            return ids
        element, left = nonzero[0], state.remaining[nonzero[0]]
        key = (state.group, tuple(sorted(state.sites)), element, left, state.used_fixed, state.n_sites, len(ids))
        hit = self._canonical_ids.get(key)
        if hit is None:
            hit = self._canonical_ids[key] = self._refuse_noncanonical(state, ids, element, left)
            if len(self._canonical_ids) > 100_000:
                self._canonical_ids.clear()
        return hit

    def _refuse_noncanonical(self, state: GrammarState, ids: np.ndarray, element: int, left: int) -> np.ndarray:
        reach = self._tables.groups[state.group]
        positions = self._pos_of_token[state.group]
        refused = []
        for token in ids:
            p = positions.get(int(token))
            if p is None or reach.mults[p] > left:
                continue
            used = state.used_fixed | (1 << p if reach.position_class[p] >= 0 else 0)
            sites = tuple(sorted([*state.sites, (p, element)]))
            budget = [self._COMPLETION_NODES]
            if not self._completes_canonically(state.group, sites, element, left - reach.mults[p], used,
                                               self.max_sites - state.n_sites - 1, 0, budget):
                refused.append(token)
        if not refused or len(refused) == len(ids):
            return ids
        return np.setdiff1d(ids, np.asarray(refused, dtype=ids.dtype), assume_unique=True)

    _COMPLETION_NODES = 64

    def _block_keeps_group(self, group: int, sites: tuple) -> bool:
        """``site_block_group(group, sites) == group``, cached. Shortcut: an element with a single
        site whose orbit alone keeps exactly the group pins it (any symmetry of the block maps
        that element's one orbit onto itself), which spares most blocks the symmetry search."""
        key = (group, sites)
        ok = self._canonical.get(key)
        if ok is None:
            per_element = Counter(e for _, e in sites)
            ok = any(per_element[e] == 1 and _position_pins_group(group, p) for p, e in sites)
            ok = ok or site_block_group(group, sites) == group
            if len(self._canonical) > 100_000:
                self._canonical.clear()
            self._canonical[key] = ok
        return ok

    def _completes_canonically(self, group: int, sites: tuple, element: int, left: int, used: int,
                               sites_left: int, first: int, budget: list[int]) -> bool:
        """Whether ``left`` more atoms of ``element`` can be placed (positions from ``first`` on,
        in letter order: each set once) so that the whole block keeps ``group``. True when the
        search runs out of ``budget`` (steps)."""
        budget[0] -= 1
        if left == 0:
            return self._block_keeps_group(group, sites)
        if sites_left <= 0:
            return False
        reach = self._tables.groups[group]
        for p in range(first, len(reach.mults)):
            m = reach.mults[p]
            fixed = reach.position_class[p] >= 0
            if m > left or (fixed and used >> p & 1):
                continue
            more = tuple(sorted([*sites, (p, element)]))
            if self._completes_canonically(group, more, element, left - m, used | (1 << p if fixed else 0),
                                           sites_left - 1, p, budget):
                return True
            if budget[0] <= 0:
                return True
        return False

    # -- feasibility -------------------------------------------------------------------
    def _fits(
        self, group: int, counts: Sequence[int], unknown: int, avail: int, req: tuple[int, ...], budget: int
    ) -> bool:
        """Can ``counts`` + ``unknown`` new elements + required ``req`` be placed within ``budget``?"""
        if budget < 0:
            return False
        full_req = self.resolved.required.get(group)
        if full_req:
            cost = self._tables.required(group, full_req).min_cost(counts, unknown, avail, req)
        else:
            cost = self._tables.groups[group].min_cost(counts, avail) + unknown
        return cost <= budget

    def _group_fits(self, group: int, counts: Sequence[int], unknown: int) -> bool:
        req = self.resolved.required.get(group, ())
        reach = self._tables.groups[group]
        return self._fits(group, counts, unknown, reach.avail_index(req), req, self.max_sites)

    def _compute(self, s: GrammarState) -> list[int]:
        v, res = self.vocab, self.resolved
        ph = s.phase
        if ph == _START:
            out = []
            if not s.has_property:
                if res.stability == "low":
                    return [v.ehull_low]
                if res.stability == "high":
                    return [v.ehull_high]
                out += [v.ehull_low, v.ehull_high]
            return out + [v.arity(k) for k in res.arities]
        if ph == _ELEMENT:
            pool = res.element_zs if res.element_zs is not None else range(1, len(v.element_symbols) + 1)
            used = set(s.elements)
            return [v.element(z) for z in pool if z not in used]
        if ph == _COUNT:
            return [v.count(c) for c in self._allowed_counts(s)]
        if ph == _GROUP:
            counts = tuple(sorted(s.counts))
            out = []
            if self._plain_groups.any():
                costs = self._tables.group_costs(counts)
                ok = (costs <= self.max_sites) & self._plain_groups
                out += [v.spacegroup(int(g)) for g in self._tables.group_ids[ok]]
            out += [v.spacegroup(g) for g in self._required_groups if self._group_fits(g, counts, 0)]
            return out
        if ph == _SITE:
            if not any(s.remaining):
                return [v.num]
            return [int(self._pos_tokens[s.group][p]) for p in self._allowed_positions(s)]
        if ph == _SITE_ELEMENT:
            return [v.element(s.elements[i]) for i in self._allowed_site_elements(s, s.pending)]
        if ph in (_COORD, _LATTICE):
            return [v.num]
        if ph == _END:
            return [v.end]
        return []

    def _allowed_counts(self, s: GrammarState) -> list[int]:
        res = self.resolved
        z = s.elements[-1]
        if res.reduced is not None:
            if s.counts:
                multiple = s.counts[0] // res.reduced[s.elements[0]]
                return [multiple * res.reduced[z]]
            return [m * res.reduced[z] for m in res.multipliers]
        prefix = tuple(sorted(s.counts))
        unknown = s.arity - len(s.counts) - 1
        budget = self.max_sites - unknown
        ok = np.zeros(self.vocab.max_count + 1, dtype=bool)
        if self._plain_groups.any():
            costs = self._tables.count_costs(prefix)
            ok |= ((costs <= budget) & self._plain_groups[None, :]).any(axis=1)
        for g in self._required_groups:
            req = self.resolved.required[g]
            rr = self._tables.required(g, req)
            ok |= rr.count_costs(prefix, unknown, rr.reserved_avail((), req), req) <= self.max_sites
        ok[0] = False
        return np.flatnonzero(ok).tolist()

    def _after_position(self, s: GrammarState, p: int) -> tuple[int, tuple[int, ...]]:
        """Pool index and required positions left once position ``p`` is taken."""
        reach = self._tables.groups[s.group]
        if p in s.required_left:
            left = list(s.required_left)
            left.remove(p)
            return s.avail, tuple(left)
        cls = reach.position_class[p]
        return (s.avail - reach.strides[cls] if cls >= 0 else s.avail), s.required_left

    def _allowed_positions(self, s: GrammarState) -> list[int]:
        reach = self._tables.groups[s.group]
        budget = self.max_sites - s.n_sites - 1
        if budget < 0:
            return []
        values = sorted({r for r in s.remaining if r})
        out = []
        verdict: dict[tuple, bool] = {}
        for p, m in enumerate(reach.mults):
            cls = reach.position_class[p]
            if cls >= 0 and s.used_fixed >> p & 1:
                continue
            if cls >= 0 and p not in s.required_left and reach.class_count(s.avail, cls) == 0:
                continue  # every unreserved position of this class is taken
            avail, req = self._after_position(s, p)
            key = (m, avail, req)
            ok = verdict.get(key)
            if ok is None:
                ok = False
                for r in values:
                    if r < m:
                        continue
                    counts = list(s.remaining)
                    counts[counts.index(r)] -= m
                    if self._fits(s.group, counts, 0, avail, req, budget):
                        ok = True
                        break
                verdict[key] = ok
            if ok:
                out.append(p)
        return out

    def _allowed_site_elements(self, s: GrammarState, p: int) -> list[int]:
        reach = self._tables.groups[s.group]
        m = reach.mults[p]
        avail, req = self._after_position(s, p)
        budget = self.max_sites - s.n_sites - 1
        out = []
        for i, r in enumerate(s.remaining):
            if r < m:
                continue
            counts = list(s.remaining)
            counts[i] -= m
            if self._fits(s.group, counts, 0, avail, req, budget):
                out.append(i)
        return out
