"""The generate stage's configuration: one dataclass, JSON-able, rebuilt by the launch layer."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

from matra_hpc.errors import MatraError, UsageError
from matra_hpc.generate.temperatures import parse_temperatures, temperature_group
from matra_hpc.util import absolute_path

DEFAULT_TEMPS = "0.7:1.65:0.05"
"""The paper's sweep (Fig. 2), as the ``--temps`` text the CLI and the demo show."""


@dataclass
class GenerateConfig:
    """Everything that decides what a generation writes (the resume fingerprint is built from it)."""

    checkpoint: str
    out: str
    temperatures: tuple[float, ...] = field(default_factory=lambda: tuple(parse_temperatures(DEFAULT_TEMPS)))
    per_temp: int = 1000
    shards: int = 1
    """Shards per temperature; each (temperature, shard) is one task of the queue."""
    condition: str | None = None
    """``Condition.parse`` syntax, e.g. ``elements=Al,Ca,Cu;spacegroups=191,194;stability=low``."""
    train_store: str | None = None
    """Token store whose structures count as known (``dup_train``); None leaves dup_train False."""
    seed: int = 0
    batch_size: int = 256
    max_length: int | None = None
    value_noise: float = 0.0
    min_distance: float = 0.7
    max_sites: int = 15
    use_cache: bool = True
    check_workers: int = 0
    """Processes per rank that decode and check rows while the rank samples the next task (0:
    in the rank itself). Outputs do not depend on it."""
    device: str | None = None
    """None: the device the launch layer assigns to this rank."""
    run_id: str | None = None
    """None: the run directory's name, else a fresh ``gen-<timestamp>``; kept on resume."""

    def __post_init__(self) -> None:
        self.temperatures = tuple(round(float(t), 2) for t in self.temperatures)
        # absolute: a job may start in another working directory than the submitting shell
        self.checkpoint, self.out = absolute_path(self.checkpoint), absolute_path(self.out)
        if self.train_store is not None:
            self.train_store = absolute_path(self.train_store)

    def validate(self) -> None:
        """Bad settings or missing inputs are a UsageError (``run_generate`` and ``submit``)."""
        if not self.temperatures:
            raise UsageError("no temperatures to sample")
        if any(not (t > 0 and math.isfinite(t)) for t in self.temperatures):
            raise UsageError(f"temperatures must be > 0: {self.temperatures}")
        if self.per_temp < 1:
            raise UsageError(f"--per-temp must be >= 1, got {self.per_temp}")
        if self.shards < 1 or self.shards > self.per_temp:
            raise UsageError(f"--shards must be between 1 and --per-temp ({self.per_temp}), got {self.shards}")
        if self.check_workers < 0:
            raise UsageError(f"--check-workers must be >= 0, got {self.check_workers}")
        if self.min_distance < 0:
            raise UsageError(f"--min-distance must be >= 0, got {self.min_distance}")
        self.sampler_settings()  # validates batch size, max length, noise
        self.parsed_condition()
        if not Path(self.checkpoint).exists():
            raise UsageError(f"checkpoint {self.checkpoint} does not exist")
        if self.train_store is not None and not (Path(self.train_store) / "zarr.json").is_file():
            raise UsageError(f"training store {self.train_store} is not a Zarr store")

    def sampler_settings(self):
        from matra_hpc.sample.sampler import SamplerSettings

        return SamplerSettings(batch_size=self.batch_size, max_length=self.max_length,
                               value_noise=self.value_noise, use_cache=self.use_cache)

    def parsed_condition(self):
        """The Condition, checked for satisfiability (an impossible one fails here, before compute)."""
        if not self.condition:
            return None
        from matra_hpc.tokens.conditions import Condition, check_condition

        try:
            condition = Condition.parse(self.condition)
            check_condition(condition, max_sites=self.max_sites)
        except MatraError as exc:
            raise UsageError(f"--condition {self.condition!r}: {exc}") from None
        return condition

    def tasks(self) -> list[tuple[float, int]]:
        return [(t, s) for t in self.temperatures for s in range(self.shards)]

    def shard_rows(self, shard: int) -> int:
        base, extra = divmod(self.per_temp, self.shards)
        return base + (1 if shard < extra else 0)


def task_seed(seed: int, temperature: float, shard: int) -> int:
    digest = hashlib.sha256(f"matra-hpc/generate:{seed}:{temperature_group(temperature)}:{shard}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)
