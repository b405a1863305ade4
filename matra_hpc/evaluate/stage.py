"""Evaluation entries that drive other stages: ``run_recovery`` and ``run_conditioning``.

Both call the generate and screen stages only through their public configs and run functions
(``GenerateConfig`` + ``run_generate``, ``ScreenConfig`` + ``run_screen``), write those stages'
ordinary stores into the output folder (so a rerun resumes them), and then analyse the stores.
Either can instead analyse stores a user already has (``generated`` / ``screened`` given), which
is how it runs on a cluster: generate and screen as jobs, then evaluate.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from matra_hpc.context import RunContext
from matra_hpc.errors import UsageError
from matra_hpc.evaluate import stats

log = logging.getLogger(__name__)


def _write_json(path: Path, data: Any) -> None:
    from matra_hpc.util import write_json_atomic

    write_json_atomic(path, data)


# ------------------------------------------------------------------ recovery (paper Fig. 3)


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


def run_recovery(config: RecoveryConfig, ctx: RunContext) -> dict[str, Any]:
    """Sample (or take) the conditioned run, optionally screen it, match the held-out structures."""
    from matra_hpc.evaluate.recovery import held_out_structures

    config.validate()
    out = Path(config.out)
    system, held_out = held_out_structures(config.held_out, config.system)  # fails before any compute
    generated = config.generated
    if generated is None:
        generated = str(out / "generated.zarr")
        _generate(config.checkpoint, generated, config.temperatures, config.n, config.shards, config.seed,
                  config.batch_size, config.condition(), config.held_out, f"recovery-{system}", ctx)
    screened = config.screened
    if screened is None and config.screen is not None:
        screened = str(out / "screened.zarr")
        _screen(generated, screened, config.screen, ctx)
    return ctx.on_rank0(_analyse_recovery, config, system, held_out, generated, screened)


def _analyse_recovery(config: RecoveryConfig, system: str, held_out: list, generated: str,
                      screened: str | None) -> dict[str, Any]:
    from matra_hpc.evaluate.recovery import (
        generated_candidates,
        held_out_summary,
        match_recovery,
        plot_recovery,
        screened_candidates,
    )

    candidates = screened_candidates(screened) if screened else generated_candidates(generated)
    result = match_recovery(held_out, candidates)
    result.update(system=system, relaxed=screened is not None, generated=str(Path(generated).resolve()),
                  screened=str(Path(screened).resolve()) if screened else None,
                  held_out_store=str(Path(config.held_out).resolve()), held_out=held_out_summary(held_out),
                  config=asdict(config))
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "recovery.json", result)
    with open(out / "recovery.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["n_sampled", "n_recovered"])
        writer.writerows(result["curve"])
    plot_recovery(result, out / "recovery.png")
    result["files"] = [str(out / f"recovery.{ext}") for ext in ("json", "csv", "png")]
    return result


# ------------------------------------------------------------------ conditioning


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


def run_conditioning(config: ConditioningConfig, ctx: RunContext) -> dict[str, Any]:
    """Generate and screen each condition (unless given), then compare their stable fractions."""
    config.validate()
    out = Path(config.out)
    screened = dict(config.screened or {})
    if config.screened is None:
        for label, condition in CONDITIONS:
            generated = str(out / f"generated-{label}.zarr")
            _generate(config.checkpoint, generated, (config.temperature,), config.n, config.shards, config.seed,
                      config.batch_size, condition, config.train_store, f"cond-{label}", ctx)
            screened[label] = str(out / f"screened-{label}.zarr")
            _screen(generated, screened[label], config.screen, ctx)
    return ctx.on_rank0(_analyse_conditioning, config, screened)


def conditioning_table(reports: dict[str, dict[str, Any]], thresholds=THRESHOLDS) -> list[dict[str, Any]]:
    """Per condition: candidates and the fraction below each threshold with its 95% interval."""
    from matra_hpc.evaluate.report import pooled_counts

    rows = []
    for label, report in reports.items():
        counts = pooled_counts(report)
        n = counts["n_unique"]
        rows.append({
            "label": label, "n_generated": counts["n_generated"], "n_candidates": n,
            "below": {f"{t:.3f}": stats.proportion(counts[f"n_below_{t:.3f}"], n) for t in thresholds},
        })
    return rows


def _analyse_conditioning(config: ConditioningConfig, screened: dict[str, str]) -> dict[str, Any]:
    from matra_hpc.evaluate.report import plot_conditioning, screen_report

    reports = {label: screen_report(path) for label, path in screened.items()}
    temps = sorted({e["temperature"] for r in reports.values() for e in r["temperatures"]})
    rows = conditioning_table(reports)
    result: dict[str, Any] = {
        "temperature": temps[0] if len(temps) == 1 else None, "temperatures": temps,
        "thresholds_ev_per_atom": list(THRESHOLDS),
        "definition": "fraction of the novel, unique candidates with e_hull below each threshold (the screen "
                      "report's n_below / n_unique), Wilson 95% interval; ratios use the Katz log interval",
        "conditions": rows, "screened": {k: str(Path(v).resolve()) for k, v in screened.items()},
    }
    by_label = {r["label"]: r for r in rows}
    if "none" in by_label:
        key = f"{max(THRESHOLDS):.3f}"
        result["ratio_to_unconditioned"] = {
            label: stats.ratio(r["below"][key]["k"], r["below"][key]["n"],
                               by_label["none"]["below"][key]["k"], by_label["none"]["below"][key]["n"])
            for label, r in by_label.items() if label != "none"}
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "conditioning.json", result)
    with open(out / "conditioning.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["condition", "n_generated", "n_candidates", "threshold", "k", "fraction", "low", "high"])
        for r in rows:
            for key, p in r["below"].items():
                writer.writerow([r["label"], r["n_generated"], r["n_candidates"], key, p["k"], p["fraction"],
                                 p["low"], p["high"]])
    plot_conditioning(result, out / "conditioning.png")
    return result


# ------------------------------------------------------------------ the stages this drives


def _generate(checkpoint: str, out: str, temperatures, n: int, shards: int, seed: int, batch_size: int,
              condition: str | None, train_store: str | None, run_id: str, ctx: RunContext) -> dict[str, Any]:
    from matra_hpc.generate.config import GenerateConfig
    from matra_hpc.generate.stage import run_generate

    config = GenerateConfig(checkpoint=checkpoint, out=out, temperatures=tuple(temperatures), per_temp=n,
                            shards=shards, condition=condition, train_store=train_store, seed=seed,
                            batch_size=batch_size, run_id=run_id)
    log.info("generate %s (%s) -> %s", run_id, condition or "unconditioned", out)
    return run_generate(config, ctx)


def _screen(generated: str, out: str, options: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    from matra_hpc.screen.config import ScreenConfig
    from matra_hpc.screen.stage import run_screen

    config = ScreenConfig(generated=generated, out=out, **options)
    log.info("screen %s -> %s", generated, out)
    return run_screen(config, ctx)


def load_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())
