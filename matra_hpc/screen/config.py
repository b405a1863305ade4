"""The screen stage's configuration: one dataclass, JSON-able, rebuilt by the launch layer."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from matra_hpc.errors import UsageError

DIRECT_EHULL = ("alignn",)
"""Potentials whose loader gives a direct e-hull prediction (``Potential.predict``)."""


@dataclass
class ScreenConfig:
    """Everything that decides what a screening writes (the resume fingerprint is built from it)."""

    generated: str
    """Input generated store (``matra-hpc/generated/1``), consolidated."""
    out: str
    """Screened store to write (``matra-hpc/screened/1``); rerun to resume."""
    relax: str = "sevennet:0.05,sevennet:0.02"
    """Relaxation protocol ``POTENTIAL:FMAX[:MAX_STEPS],...`` (the paper: ``m3gnet:0.1,orb:0.02``)."""
    max_steps: int = 300
    """FIRE step cap of each protocol step without its own cap."""
    weights: str | None = None
    """``NAME=PATH,...``: weights per potential (default: the embedded ones, sevennet and chgnet)."""
    hull_reference: str | None = None
    """Token store or CIF/extxyz folder whose structures, relaxed alike, make the hull."""
    ehull_direct: str | None = None
    """A model that predicts the e-hull from the relaxed structure (``alignn``, as the paper's
    section IV.4), recorded as a second estimate (``e_hull_direct``); weights via ``--weights``."""
    reference_max_ehull: float = 0.001
    """Only references whose own DFT e-hull is at most this (eV/atom) enter the ML hull."""
    reference_cache: str | None = None
    """Folder of relaxed reference energies, to share between screenings of several stores
    (a run and its baseline); None: ``<out>/references``."""
    novelty_index: str | None = None
    """Index from ``matra-hpc index build``; None: nothing is known, every relaxed row is novel."""
    temperatures: str | None = None
    """Subset of the generated temperatures (``0.7:1.0:0.05`` or a list); None: all of them."""
    limit: int | None = None
    """Relax only the first N screenable rows of at most ``max_atoms`` sites in (T, row) order;
    the rest: not_screened_limit."""
    shards: int = 1
    """Shards per temperature (tasks of the queue, or of a job array)."""
    batched: bool = True
    """torch-sim batched relaxation where the potential has a batched model (else ASE, per structure)."""
    batch_atoms: int = 512
    """Atoms in flight in one batch (torch-sim's max_memory_scaler; raise it on a GPU)."""
    max_atoms: int = 64
    """Structures with more sites (after reduction to the primitive cell) are not relaxed."""
    primitive: bool = True
    """Relax the primitive cell of each candidate (fewer atoms, same energy per atom)."""
    device: str | None = None
    """None: the device the launch layer assigns to this process."""
    threads: int | None = None
    """CPU threads of the potential (torch intra-op); None: torch's default (``OMP_NUM_THREADS``).
    One process per node with all its cores beats ranks that each relax their own references."""
    run_id: str | None = None

    def validate(self) -> None:
        """Fail on bad settings before anything runs (also before a job is submitted)."""
        from matra_hpc.screen.potentials import check_weights, parse_weights
        from matra_hpc.screen.relax import parse_protocol

        if not (Path(self.generated) / "zarr.json").is_file():
            raise UsageError(f"generated store {self.generated} is not a Zarr store")
        steps = parse_protocol(self.relax, self.max_steps)
        weights = parse_weights(self.weights)
        for name in sorted({s.potential for s in steps}):
            check_weights(name, weights.get(name))
        if self.ehull_direct is not None:
            if self.ehull_direct not in DIRECT_EHULL:
                raise UsageError(f"--ehull-direct {self.ehull_direct!r}: known: {', '.join(DIRECT_EHULL)}")
            check_weights(self.ehull_direct, weights.get(self.ehull_direct))
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {self.threads}")
        if self.max_steps < 0:
            raise UsageError(f"--max-steps must be >= 0, got {self.max_steps}")
        if self.shards < 1:
            raise UsageError(f"--shards must be >= 1, got {self.shards}")
        if self.limit is not None and self.limit < 0:
            raise UsageError(f"--limit must be >= 0, got {self.limit}")
        if self.batch_atoms < 1 or self.max_atoms < 1:
            raise UsageError("--batch-atoms and --max-atoms must be >= 1")
        if self.max_atoms > self.batch_atoms:
            raise UsageError(f"--max-atoms ({self.max_atoms}) must not exceed --batch-atoms ({self.batch_atoms})")
        if not math.isfinite(self.reference_max_ehull):
            raise UsageError("--reference-max-ehull must be finite")
        if self.hull_reference is not None and not Path(self.hull_reference).exists():
            raise UsageError(f"--hull-reference {self.hull_reference} does not exist")
        if self.novelty_index is not None and not Path(self.novelty_index).exists():
            raise UsageError(f"--novelty-index {self.novelty_index} does not exist")
        self.selected_temperatures()

    def protocol(self):
        from matra_hpc.screen.relax import parse_protocol

        return parse_protocol(self.relax, self.max_steps)

    def weight_paths(self) -> dict[str, str]:
        """Resolved weight path per potential of the protocol."""
        from matra_hpc.screen.potentials import check_weights, parse_weights

        given = parse_weights(self.weights)
        names = {s.potential for s in self.protocol()} | ({self.ehull_direct} if self.ehull_direct else set())
        return {name: check_weights(name, given.get(name)) for name in sorted(names)}

    def selected_temperatures(self) -> list[float] | None:
        if self.temperatures is None:
            return None
        from matra_hpc.generate.temperatures import parse_temperatures

        return parse_temperatures(self.temperatures)
