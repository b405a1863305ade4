"""The token sequence of one crystal: token ids and a parallel array of continuous values."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class TokenSequence:
    """``tokens`` and ``values`` have the same length; ``values`` is NaN except at ``<num>``.

    Layout (docs/contracts.md section A):
    ``[EHULL_*] ARITY_k (El N_c)*k SG_g (W El <num>*n_free)* <num>*n_lattice <end>``.
    """

    tokens: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.values):
            raise ValueError(f"tokens and values differ in length ({len(self.tokens)} != {len(self.values)})")

    def __len__(self) -> int:
        return len(self.tokens)

    def discrete(self) -> list[int]:
        return list(self.tokens)

    def continuous(self) -> list[float]:
        """The continuous values in sequence order (the non-NaN entries of ``values``)."""
        return [v for v in self.values if not math.isnan(v)]

    def to_json(self) -> dict:
        return {"tokens": list(self.tokens), "values": [None if math.isnan(v) else v for v in self.values]}

    @classmethod
    def from_json(cls, data: dict) -> TokenSequence:
        return cls(
            tokens=[int(t) for t in data["tokens"]],
            values=[math.nan if v is None else float(v) for v in data["values"]],
        )
