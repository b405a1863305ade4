"""Round-trip check of the representation: structure -> tokens -> structure -> tokens.

A structure round-trips when pymatgen's StructureMatcher (default tolerances) matches it with
``decode(encode(structure))`` and re-encoding that gives the same discrete tokens and the
same continuous values within 1e-4 (the issue's criterion). Rejected structures are counted
under their rejection reason; round-trip failures under ``decode_error``,
``structure_mismatch`` or ``sequence_mismatch``.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from matra_hpc.tokens.decode import decode
from matra_hpc.tokens.encode import encode
from matra_hpc.tokens.errors import DecodeError, EncodeError
from matra_hpc.tokens.sequence import TokenSequence

__all__ = ["VALUE_TOLERANCE", "RoundTrip", "check_roundtrip", "same_sequence", "summarize"]

VALUE_TOLERANCE = 1e-4
ROUNDTRIP_FAILURES = ("decode_error", "structure_mismatch", "sequence_mismatch")


def same_sequence(a: TokenSequence, b: TokenSequence, tol: float = VALUE_TOLERANCE) -> bool:
    """Same discrete tokens and continuous values within ``tol`` (free values compared mod 1)."""
    if a.tokens != b.tokens:
        return False
    for x, y in zip(a.values, b.values, strict=True):
        if math.isnan(x) != math.isnan(y):
            return False
        if not math.isnan(x) and abs(x - y) > tol:
            return False
    return True


@dataclass
class RoundTrip:
    encodable: bool
    ok: bool
    failure: str | None  # rejection reason or one of ROUNDTRIP_FAILURES
    detail: str = ""


def check_roundtrip(structure, matcher=None, **encode_options) -> RoundTrip:
    """Encode, decode, re-encode one structure and say whether it came back."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    try:
        seq = encode(structure, **encode_options)
    except EncodeError as exc:
        return RoundTrip(False, False, exc.reason, str(exc))
    try:
        rebuilt = decode(seq)
        again = encode(rebuilt, **encode_options)
    except (DecodeError, EncodeError) as exc:
        return RoundTrip(True, False, "decode_error", str(exc))
    if not same_sequence(seq, again):
        return RoundTrip(True, False, "sequence_mismatch", "re-encoding the decoded structure differs")
    if not (matcher or StructureMatcher()).fit(structure, rebuilt):
        return RoundTrip(
            True, False, "structure_mismatch", "StructureMatcher does not match the decoded structure"
        )
    return RoundTrip(True, True, None)


def summarize(results: Iterable[RoundTrip], seconds: float) -> dict:
    """The summary object of ``matra-hpc tokens roundtrip`` (its last output line)."""
    results = list(results)
    encodable = sum(r.encodable for r in results)
    ok = sum(r.ok for r in results)
    failures = Counter(r.failure for r in results if r.failure is not None)
    return {
        "n": len(results),
        "encodable": encodable,
        "roundtrip_ok": ok,
        "rate": (ok / encodable) if encodable else 0.0,
        "failures": dict(sorted(failures.items())),
        "structures_per_s": (len(results) / seconds) if seconds > 0 else 0.0,
    }


def timed_roundtrips(structures: Iterable, **encode_options) -> tuple[list[RoundTrip], float]:
    from pymatgen.analysis.structure_matcher import StructureMatcher

    matcher = StructureMatcher()
    start = time.perf_counter()
    results = [check_roundtrip(s, matcher, **encode_options) for s in structures]
    return results, time.perf_counter() - start
