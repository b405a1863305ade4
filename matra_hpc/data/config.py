"""The data stage's configuration: the single source of its defaults and their validation."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from matra_hpc.errors import UsageError
from matra_hpc.util import absolute_path


@dataclass
class DataPrepareConfig:
    """Configuration of ``matra-hpc data prepare`` (and ``submit data-prepare``)."""

    sources: list[str] = field(default_factory=list)
    """``KIND[:NAME]=PATH`` or ``flla`` (see matra_hpc.data.readers)."""
    out: str = "tokens.zarr"
    max_wyckoff: int = 15
    """Structures with more Wyckoff sites are rejected (``too_many_sites``)."""
    max_ehull: float = 0.25
    """eV/atom; entries of the kinds in ``ehull_filter_kinds`` above it are dropped (paper: Alexandria)."""
    ehull_filter_kinds: list[str] = field(default_factory=lambda: ["alexandria"])
    val_frac: float = 0.1
    seed: int = 0
    """Salts the prototype-hash split; the same seed always gives the same split."""
    workers: int = 1
    """Processes per rank (a local process pool when > 1)."""
    shard_size: int = 1000
    symprec: float = 0.01
    angle_tolerance: float = 5.0
    limit: int | None = None
    """Read only the first N records of each source (smoke runs, benchmarks)."""
    overwrite: bool = False
    """Delete an existing store at ``out`` that was made with other settings, instead of refusing."""
    hold_out_system: str | None = None
    """Chemical system ``A-B-C``: every structure whose element set is exactly {A, B, C} is kept out
    of the store (reason ``held_out_system``) and recorded in its attrs ``held_out`` with its
    structure, so ``eval recovery`` can count what conditioned generation finds again."""

    def __post_init__(self) -> None:
        self.sources = list(self.sources)
        self.ehull_filter_kinds = list(self.ehull_filter_kinds)
        # absolute: a job may start in another working directory than the submitting shell
        self.out = absolute_path(self.out)

    def validate(self) -> None:
        """Bad settings or unreadable inputs are a UsageError (``run_data_prepare`` and ``submit``)."""
        if not self.sources:
            raise UsageError("data prepare: give at least one source (e.g. mp=DIR, alexandria=DIR, flla)")
        if not 0.0 <= self.val_frac < 1.0:
            raise UsageError(f"--val-frac must be in [0, 1), got {self.val_frac}")
        if self.max_wyckoff < 1:
            raise UsageError(f"--max-wyckoff must be >= 1, got {self.max_wyckoff}")
        if self.workers < 1:
            raise UsageError(f"--workers must be >= 1, got {self.workers}")
        if self.shard_size < 1:
            raise UsageError(f"--shard-size must be >= 1, got {self.shard_size}")
        if self.limit is not None and self.limit < 1:
            raise UsageError(f"--limit must be >= 1, got {self.limit}")
        if not math.isfinite(self.max_ehull):
            raise UsageError("--max-ehull must be a finite number of eV/atom")
        if self.hold_out_system is not None:
            held_out_elements(self.hold_out_system)
        from matra_hpc.data.readers import load_summary, parse_source

        for spec in (parse_source(s) for s in self.sources):
            if spec.summary:
                load_summary(spec.summary)  # a bad table is a usage error now, not a worker crash later


def held_out_elements(system: str) -> frozenset[str]:
    """The element set of ``A-B-C``; a UsageError names what is wrong."""
    from pymatgen.core.periodic_table import Element

    parts = [p.strip() for p in str(system).split("-")]
    bad = [p for p in parts if not Element.is_valid_symbol(p)]
    if not parts or bad or len(set(parts)) != len(parts):
        raise UsageError(f"--hold-out-system {system!r}: expected distinct element symbols joined by '-', "
                         f"e.g. Al-Ca-Cu")
    return frozenset(parts)
