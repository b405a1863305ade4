"""The flat token vocabulary (docs/contracts.md section A).

Ids, in this order: ``<pad> <bos> <end> <num>``; ``EHULL_LOW EHULL_HIGH``; ``ARITY_1..8``;
the 118 elements by atomic number; counts ``N_1..N_512``; ``SG_1..SG_230``; then the shared
Wyckoff-orbit tokens ``W_0..`` of :mod:`matra_hpc.tokens.wyckoff`. The layout is derived
deterministically from pyxtal's tables, so ``Vocab.to_json()`` and ``Vocab.hash`` are the same
on every machine with the same pyxtal release; stores and checkpoints record both.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable

from matra_hpc.tokens.wyckoff import WyckoffPosition, n_wyckoff_tokens, wyckoff_table

__all__ = ["Vocab", "load_vocab", "MAX_ARITY", "MAX_COUNT", "N_ELEMENTS", "N_SPACEGROUPS"]

MAX_ARITY = 8
MAX_COUNT = 512
N_ELEMENTS = 118
N_SPACEGROUPS = 230
SPECIALS = ("<pad>", "<bos>", "<end>", "<num>")
PROPERTIES = ("EHULL_LOW", "EHULL_HIGH")
VOCAB_VERSION = 1


def _element_symbols() -> tuple[str, ...]:
    from pymatgen.core.periodic_table import Element

    return tuple(Element.from_Z(z).symbol for z in range(1, N_ELEMENTS + 1))


class Vocab:
    """Token ids and their meaning. Build it with :func:`load_vocab` (cached)."""

    max_arity = MAX_ARITY
    max_count = MAX_COUNT

    def __init__(self) -> None:
        self.pad, self.bos, self.end, self.num = range(4)
        self.ehull_low, self.ehull_high = 4, 5
        start = 6
        self.arity_range = (start, start + MAX_ARITY)
        self.element_range = (self.arity_range[1], self.arity_range[1] + N_ELEMENTS)
        self.count_range = (self.element_range[1], self.element_range[1] + MAX_COUNT)
        self.spacegroup_range = (self.count_range[1], self.count_range[1] + N_SPACEGROUPS)
        self.wyckoff_range = (self.spacegroup_range[1], self.spacegroup_range[1] + n_wyckoff_tokens())
        self.size = self.wyckoff_range[1]
        self.element_symbols = _element_symbols()
        self._z_of_symbol = {s: z for z, s in enumerate(self.element_symbols, start=1)}
        table = wyckoff_table()
        w0 = self.wyckoff_range[0]
        self._wyckoff_token = {(g, p.letter): w0 + p.token_index for g, ps in table.items() for p in ps}
        self._position_of_token = {(g, w0 + p.token_index): p for g, ps in table.items() for p in ps}
        self._table = table
        self.hash = hashlib.sha256(
            json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()

    # id of ...
    def arity(self, k: int) -> int:
        if not 1 <= k <= MAX_ARITY:
            raise ValueError(f"arity must be in 1..{MAX_ARITY}, got {k}")
        return self.arity_range[0] + k - 1

    def element(self, z: int) -> int:
        if not 1 <= z <= N_ELEMENTS:
            raise ValueError(f"atomic number must be in 1..{N_ELEMENTS}, got {z}")
        return self.element_range[0] + z - 1

    def count(self, n: int) -> int:
        if not 1 <= n <= MAX_COUNT:
            raise ValueError(f"count must be in 1..{MAX_COUNT}, got {n}")
        return self.count_range[0] + n - 1

    def spacegroup(self, g: int) -> int:
        if not 1 <= g <= N_SPACEGROUPS:
            raise ValueError(f"space group must be in 1..{N_SPACEGROUPS}, got {g}")
        return self.spacegroup_range[0] + g - 1

    def wyckoff(self, group: int, letter: str) -> int:
        try:
            return self._wyckoff_token[(group, letter)]
        except KeyError:
            raise ValueError(f"space group {group} has no Wyckoff position {letter!r}") from None

    # meaning of ...
    def kind(self, token: int) -> str:
        t = int(token)
        if 0 <= t < len(SPECIALS):
            return "special"
        if len(SPECIALS) <= t < len(SPECIALS) + len(PROPERTIES):
            return "property"
        for name, (lo, hi) in (
            ("arity", self.arity_range),
            ("element", self.element_range),
            ("count", self.count_range),
            ("spacegroup", self.spacegroup_range),
            ("wyckoff", self.wyckoff_range),
        ):
            if lo <= t < hi:
                return name
        raise ValueError(f"token id {token} is outside the vocabulary (size {self.size})")

    def _offset(self, t: int, rng: tuple[int, int], what: str) -> int:
        t = int(t)
        if not rng[0] <= t < rng[1]:
            raise ValueError(f"token {t} is not {what} token")
        return t - rng[0]

    def arity_of(self, t: int) -> int:
        return self._offset(t, self.arity_range, "an arity") + 1

    def element_of(self, t: int) -> int:
        return self._offset(t, self.element_range, "an element") + 1

    def count_of(self, t: int) -> int:
        return self._offset(t, self.count_range, "a count") + 1

    def spacegroup_of(self, t: int) -> int:
        return self._offset(t, self.spacegroup_range, "a space group") + 1

    def spacegroup_in(self, tokens: Iterable[int]) -> int:
        """The space group of a token sequence (its first space-group token); 0 when it has none."""
        start, stop = self.spacegroup_range
        for t in tokens:
            if start <= t < stop:
                return int(t) - start + 1
        return 0

    def wyckoff_of(self, group: int, t: int) -> WyckoffPosition | None:
        """The position of ``group`` that token ``t`` stands for, or None if it has none."""
        return self._position_of_token.get((int(group), int(t)))

    def z_of_symbol(self, symbol: str) -> int:
        return self._z_of_symbol[symbol]

    def token_str(self, t: int) -> str:
        kind = self.kind(t)
        if kind == "special":
            return SPECIALS[t]
        if kind == "property":
            return PROPERTIES[t - 4]
        if kind == "arity":
            return f"ARITY_{self.arity_of(t)}"
        if kind == "element":
            return self.element_symbols[self.element_of(t) - 1]
        if kind == "count":
            return f"N_{self.count_of(t)}"
        if kind == "spacegroup":
            return f"SG_{self.spacegroup_of(t)}"
        return f"W_{t - self.wyckoff_range[0]}"

    def to_json(self) -> dict:
        """Everything that fixes the id layout, as plain JSON (stored with every store/checkpoint)."""
        n_w = self.wyckoff_range[1] - self.wyckoff_range[0]
        orbit_keys = [""] * n_w
        for ps in self._table.values():
            for p in ps:
                orbit_keys[p.token_index] = p.orbit_key
        return {
            "version": VOCAB_VERSION,
            "size": self.size,
            "specials": list(SPECIALS),
            "properties": list(PROPERTIES),
            "ehull_threshold_ev_per_atom": 0.075,
            "max_arity": MAX_ARITY,
            "elements": list(self.element_symbols),
            "max_count": MAX_COUNT,
            "n_spacegroups": N_SPACEGROUPS,
            "ranges": {
                "arity": list(self.arity_range),
                "element": list(self.element_range),
                "count": list(self.count_range),
                "spacegroup": list(self.spacegroup_range),
                "wyckoff": list(self.wyckoff_range),
            },
            "wyckoff_orbits": orbit_keys,
            "wyckoff_positions": {
                str(g): [[p.letter, p.multiplicity, p.n_free, p.token_index] for p in ps]
                for g, ps in self._table.items()
            },
        }


@functools.cache
def load_vocab() -> Vocab:
    """The vocabulary (built once per process, about a second)."""
    return Vocab()
