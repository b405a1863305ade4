"""The evaluation stage's configurations: one dataclass per entry, the single source of defaults.

``BaselineConfig`` (``baseline pyxtal``), ``RecoveryConfig`` (``eval recovery``),
``ConditioningConfig`` (``eval conditioning``), ``ReportAllConfig`` (``report all``); each
validates itself before anything runs (a bad setting is a ``UsageError``, exit 2).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from matra_hpc.errors import UsageError

BASELINE_TEMPERATURE = 0.0
"""The baseline's one group is ``T0.00``: no sampling temperature applies to it."""
METHOD = "pyxtal"


@dataclass
class BaselineConfig:
    """A PyXtal baseline run; every field takes part in the resume fingerprint but ``run_id``."""

    out: str
    n: int = 1000
    """Structures to write (valid, encodable ones: failed draws are redrawn and counted)."""
    shards: int = 1
    seed: int = 0
    min_elements: int = 2
    max_elements: int = 3
    max_count: int = 6
    """Largest count of one element in the charge-neutral formula unit."""
    max_atoms: int = 40
    """Atoms in the conventional cell."""
    max_sites: int = 15
    """Wyckoff sites, as the training filter (``--max-wyckoff``)."""
    attempts_per_group: int = 20
    min_distance: float = 0.7
    """Angstrom, the bond check of the generated rows."""
    train_store: str | None = None
    """Token store whose structures flag ``dup_train`` (as ``generate --train-store``)."""
    systems_from: str | None = None
    """A generated store: each row takes the chemical system of a random candidate of it (a row that
    decodes with bonds ok, min..max elements, a charge-neutral formula possible), so the baseline is
    drawn in the model's chemistries (and needs the same hull references); None: random elements."""
    run_id: str | None = None

    def validate(self) -> None:
        if self.n < 1:
            raise UsageError(f"--n must be >= 1, got {self.n}")
        if not 1 <= self.shards <= self.n:
            raise UsageError(f"--shards must be between 1 and --n ({self.n}), got {self.shards}")
        if not 2 <= self.min_elements <= self.max_elements <= 8:
            raise UsageError(f"elements per crystal must satisfy 2 <= min <= max <= 8, got "
                             f"{self.min_elements}..{self.max_elements}")
        if self.max_count < 1 or self.max_atoms < self.min_elements or self.max_sites < 1:
            raise UsageError("--max-count, --max-atoms and --max-sites must be positive "
                             "(and --max-atoms at least the number of elements)")
        if self.attempts_per_group < 1:
            raise UsageError(f"--attempts-per-group must be >= 1, got {self.attempts_per_group}")
        if self.train_store is not None and not (Path(self.train_store) / "zarr.json").is_file():
            raise UsageError(f"training store {self.train_store} is not a Zarr store")
        if self.systems_from is not None and not (Path(self.systems_from) / "zarr.json").is_file():
            raise UsageError(f"--systems-from {self.systems_from} is not a Zarr store")

    def shard_rows(self, shard: int) -> int:
        base, extra = divmod(self.n, self.shards)
        return base + (1 if shard < extra else 0)

    def fingerprint(self, train_fp: str | None) -> dict[str, Any]:
        fp = {k: v for k, v in asdict(self).items() if k not in ("out", "run_id", "train_store", "n", "shards")}
        # the generated-store reader and `report generate` read these three keys
        return {"temperatures": [BASELINE_TEMPERATURE], "shards": self.shards, "per_temp": self.n,
                "condition": None, "baseline": METHOD, "train_store": train_fp, **fp}


@dataclass
class RecoveryConfig:
    """``eval recovery``: generate conditioned on a held-out system, count what comes back."""

    system: str
    held_out: str
    """Token store prepared with ``--hold-out-system`` (its attrs hold the held-out structures)."""
    out: str
    """Output folder: generated.zarr (and screened.zarr), recovery.{json,csv,png}."""
    checkpoint: str | None = None
    n: int = 2000
    """Rows sampled per temperature."""
    temperatures: tuple[float, ...] = (1.0,)
    shards: int = 1
    seed: int = 0
    batch_size: int = 256
    stability: str | None = None
    """Also condition on ``stability=low|high`` (the paper conditions on the elements only)."""
    generated: str | None = None
    """Analyse this generated store instead of sampling (then no checkpoint is needed)."""
    screened: str | None = None
    """Match the relaxed structures of this screened store (of the generated rows)."""
    screen: dict[str, Any] | None = None
    """Fields of the screen stage's config (e.g. ``{"relax": "sevennet:0.05"}``) to relax the
    sample before matching; None matches the generated structures as sampled."""

    def validate(self) -> None:
        from matra_hpc.evaluate.recovery import parse_system

        parse_system(self.system)
        if not (Path(self.held_out) / "zarr.json").is_file():
            raise UsageError(f"--held-out {self.held_out} is not a Zarr store")
        if self.generated is None and self.checkpoint is None:
            raise UsageError("give --checkpoint (to sample) or --generated (a store to analyse)")
        if self.generated is not None and not (Path(self.generated) / "zarr.json").is_file():
            raise UsageError(f"--generated {self.generated} is not a Zarr store")
        if self.screened is not None and not (Path(self.screened) / "zarr.json").is_file():
            raise UsageError(f"--screened {self.screened} is not a Zarr store")
        if self.screened is not None and self.screen is not None:
            raise UsageError("give either --screened (a finished screening) or screening options, not both")
        if self.n < 1 or self.shards < 1 or self.shards > self.n:
            raise UsageError(f"--n must be >= 1 and --shards in 1..n, got n={self.n}, shards={self.shards}")
        if self.stability not in (None, "low", "high"):
            raise UsageError(f"--stability must be low or high, got {self.stability!r}")

    def condition(self) -> str:
        from matra_hpc.evaluate.recovery import parse_system

        parts = [f"elements={','.join(parse_system(self.system))}"]
        if self.stability:
            parts.append(f"stability={self.stability}")
        return ";".join(parts)


CONDITIONS = (("low", "stability=low"), ("high", "stability=high"), ("none", None))
THRESHOLDS = (0.05, 0.1)


@dataclass
class ConditioningConfig:
    """``eval conditioning``: stability=low, stability=high and unconditioned at one temperature."""

    out: str
    checkpoint: str | None = None
    n: int = 1000
    """Rows sampled per condition."""
    temperature: float = 1.0
    shards: int = 1
    seed: int = 0
    batch_size: int = 256
    train_store: str | None = None
    screen: dict[str, Any] = field(default_factory=dict)
    """Fields of the screen stage's config (relaxation protocol, hull reference, novelty index)."""
    screened: dict[str, str] | None = None
    """``{label: screened store}`` to analyse instead of generating and screening."""

    def validate(self) -> None:
        if self.screened is None:
            if self.checkpoint is None:
                raise UsageError("give --checkpoint (to sample and screen) or --screened LABEL=STORE ...")
            if self.n < 1 or not 1 <= self.shards <= self.n:
                raise UsageError(f"--n must be >= 1 and --shards in 1..n, got n={self.n}, shards={self.shards}")
            if not self.temperature > 0:
                raise UsageError(f"--temperature must be > 0, got {self.temperature}")
        else:
            if not self.screened:
                raise UsageError("--screened needs at least one LABEL=STORE")
            for label, path in self.screened.items():
                if not (Path(path) / "zarr.json").is_file():
                    raise UsageError(f"--screened {label}={path}: not a Zarr store")


@dataclass
class ReportAllConfig:
    generated: str
    screened: str | None = None
    baseline: str | None = None
    """Screened store of the baseline (Fig. 4 and the ratio), or its generated store (validity only)."""
    recovery: str | None = None
    conditioning: str | None = None
    checkpoint: str | None = None
    out: str | None = None

    def validate(self) -> None:
        for name in ("generated", "screened", "baseline"):
            path = getattr(self, name)
            if path is not None and not (Path(path) / "zarr.json").is_file():
                raise UsageError(f"--{name} {path} is not a Zarr store")
        for name in ("recovery", "conditioning"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise UsageError(f"--{name} {path}: no such file (the JSON written by `eval {name}`)")
        if self.checkpoint is not None and not Path(self.checkpoint).exists():
            raise UsageError(f"--checkpoint {self.checkpoint} does not exist")

    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path(self.generated).resolve().parent / "report"
