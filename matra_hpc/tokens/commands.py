"""The ``matra-hpc tokens encode|decode|roundtrip`` stages: configs and run functions.

Each run function streams its inputs, writes its outputs atomically (``.partial``, then
rename) and returns a summary dict that the CLI prints as the last output line.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from matra_hpc.errors import UsageError
from matra_hpc.tokens.decode import decode
from matra_hpc.tokens.encode import DEFAULT_SYMMETRY, SYMMETRY_BACKENDS, encode
from matra_hpc.tokens.errors import DecodeError, EncodeError
from matra_hpc.tokens.hashing import prototype_hash
from matra_hpc.tokens.roundtrip import check_roundtrip, summarize
from matra_hpc.tokens.sequence import TokenSequence
from matra_hpc.tokens.structure_io import ParseFailure, iter_structures
from matra_hpc.tokens.vocab import load_vocab

__all__ = [
    "EncodeConfig",
    "DecodeConfig",
    "RoundTripConfig",
    "run_encode",
    "run_decode",
    "run_roundtrip",
]


@dataclass
class EncodeOptions:
    symprec: float = 0.01
    angle_tolerance: float = 5.0
    max_sites: int = 15
    symmetry: str = DEFAULT_SYMMETRY

    def __post_init__(self) -> None:
        if self.symmetry not in SYMMETRY_BACKENDS:
            raise UsageError(f"symmetry must be one of {', '.join(SYMMETRY_BACKENDS)}, got {self.symmetry!r}")

    def kwargs(self) -> dict:
        return {
            "symprec": self.symprec,
            "angle_tolerance": self.angle_tolerance,
            "max_sites": self.max_sites,
            "symmetry": self.symmetry,
        }


@dataclass
class EncodeConfig:
    inputs: list[str]
    out: str
    csv_column: str | None = None
    options: EncodeOptions = field(default_factory=EncodeOptions)


@dataclass
class DecodeConfig:
    sequences: str
    out: str


@dataclass
class RoundTripConfig:
    inputs: list[str]
    csv_column: str | None = None
    limit: int | None = None
    options: EncodeOptions = field(default_factory=EncodeOptions)


def _progress(iterable, desc: str):
    return tqdm(iterable, desc=desc, unit="structure", mininterval=1.0, leave=False)


def run_encode(config: EncodeConfig) -> dict:
    """Encode every readable structure to one JSON line each (id, tokens, values, hash)."""
    vocab = load_vocab()
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    failures: Counter = Counter()
    n = encoded = 0
    start = time.perf_counter()
    with open(partial, "w") as handle:
        for name, item in _progress(iter_structures(config.inputs, config.csv_column), "encode"):
            n += 1
            try:
                if isinstance(item, ParseFailure):
                    raise EncodeError("parse_error", item.detail)
                seq = encode(item, **config.options.kwargs())
            except EncodeError as exc:
                failures[exc.reason] += 1
                continue
            record = {
                "id": name,
                **seq.to_json(),
                "prototype_hash": prototype_hash(seq),
                "vocab_hash": vocab.hash,
            }
            handle.write(json.dumps(record) + "\n")
            encoded += 1
    os.replace(partial, out)
    seconds = time.perf_counter() - start
    return {
        "n": n,
        "encoded": encoded,
        "failures": dict(sorted(failures.items())),
        "out": str(out),
        "structures_per_s": n / seconds if seconds > 0 else 0.0,
    }


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[-120:] or "structure"


def run_decode(config: DecodeConfig) -> dict:
    """Decode each JSON line of a sequence file to a CIF file in ``config.out``."""
    from pymatgen.io.cif import CifWriter

    source = Path(config.sequences)
    if not source.is_file():
        raise UsageError(f"no such sequence file: {source}")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    failures: Counter = Counter()
    n = decoded = 0
    with open(source) as handle:
        for line_number, line in enumerate(_progress(handle, "decode"), start=1):
            if not line.strip():
                continue
            n += 1
            try:
                record = json.loads(line)
                seq = TokenSequence.from_json(record)
            except (ValueError, KeyError, TypeError):
                failures["unreadable_line"] += 1
                continue
            try:
                structure = decode(seq)
            except DecodeError:
                failures["decode_error"] += 1
                continue
            name = _safe_name(str(record.get("id", f"line{line_number}")))
            target = out / f"{line_number:06d}_{name}.cif"
            partial = target.with_name(target.name + ".partial")
            CifWriter(structure).write_file(str(partial))
            os.replace(partial, target)
            decoded += 1
    return {"n": n, "decoded": decoded, "failures": dict(sorted(failures.items())), "out": str(out)}


def run_roundtrip(config: RoundTripConfig) -> dict:
    """Round-trip every structure (see ``matra_hpc.tokens.roundtrip``) and summarise.

    ``failed`` in the summary lists every structure that did not come back (rejected by encode
    or failed the round trip): its id (file, CSV row id or frame), index and reason."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from matra_hpc.tokens.roundtrip import RoundTrip

    matcher = StructureMatcher()
    results = []
    failed = []
    start = time.perf_counter()
    for i, (name, item) in enumerate(
        _progress(iter_structures(config.inputs, config.csv_column), "roundtrip")
    ):
        if config.limit is not None and i >= config.limit:
            break
        if isinstance(item, ParseFailure):
            result = RoundTrip(False, False, "parse_error", item.detail)
        else:
            result = check_roundtrip(item, matcher, **config.options.kwargs())
        results.append(result)
        if not result.ok:
            # name is the file (and CSV row id or frame); index counts structures over all inputs.
            failed.append({"id": name, "index": i, "reason": result.failure, "detail": result.detail})
    summary = summarize(results, time.perf_counter() - start)
    if not math.isfinite(summary["rate"]):
        summary["rate"] = 0.0
    summary["failed"] = failed
    return summary
