"""Errors of the token representation: why a structure cannot be encoded, where a sequence breaks."""

from __future__ import annotations

from matra_hpc.errors import MatraError

# The closed list of rejection reasons (contract section 3); exactly one per rejected input.
REJECTION_REASONS = (
    "parse_error",
    "not_periodic",
    "nan_or_inf",
    "disordered",
    "unknown_element",
    "symmetry_failed",
    "spacegroup_1",
    "too_many_sites",
)


class EncodeError(MatraError, ValueError):
    """A structure that has no token sequence; ``reason`` is one of ``REJECTION_REASONS``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in REJECTION_REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}")
        self.reason = reason
        self.detail = detail
        super().__init__(f"cannot encode structure: {reason}" + (f" ({detail})" if detail else ""))


class DecodeError(MatraError, ValueError):
    """An inconsistent token sequence; ``position`` is the index of the first bad token
    (``len(tokens)`` when the sequence ends too early)."""

    def __init__(self, position: int, why: str) -> None:
        self.position = position
        self.why = why
        super().__init__(f"cannot decode sequence at token {position}: {why}")
