"""The evaluation stage's entries: ``run_baseline``, ``run_recovery``, ``run_conditioning``, ``run_report_all``.

``run_baseline`` writes the PyXtal baseline store (``baseline.py`` draws the rows). Recovery and
conditioning call the generate and screen stages only through their public configs and run functions
(``GenerateConfig`` + ``run_generate``, ``ScreenConfig`` + ``run_screen``), write those stages'
ordinary stores into the output folder (so a rerun resumes them), and then analyse the stores.
Either can instead analyse stores a user already has (``generated`` / ``screened`` given), which
is how it runs on a cluster: generate and screen as jobs, then evaluate.
"""

from __future__ import annotations

import csv
import json
import logging
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from matra_hpc.context import RunContext
from matra_hpc.errors import StoreError, UsageError
from matra_hpc.evaluate import stats
from matra_hpc.evaluate.config import (
    BASELINE_TEMPERATURE,
    CONDITIONS,
    METHOD,
    THRESHOLDS,
    BaselineConfig,
    ConditioningConfig,
    RecoveryConfig,
    ReportAllConfig,
)

log = logging.getLogger(__name__)


def _write_json(path: Path, data: Any) -> None:
    from matra_hpc.util import write_json_atomic

    write_json_atomic(path, data)


# ------------------------------------------------------------------ the PyXtal baseline


def _prepare_baseline(config: BaselineConfig, ctx: RunContext) -> dict[str, Any]:
    from matra_hpc.generate import store as gstore
    from matra_hpc.tokens import load_vocab

    vocab = load_vocab()
    train_fp = None
    if config.train_store:
        from matra_hpc.generate.duplicates import store_fingerprint

        train_fp = store_fingerprint(config.train_store)
    run_id = gstore.run_id_for(config.run_id, ctx.run_dir, "pyxtal")
    import pyxtal
    import smact

    baseline = {"method": METHOD, "pyxtal": pyxtal.__version__, "smact": smact.__version__,
                "charge_balanced": True, "oxidation_states": "smact ICSD24",
                "spacegroups": "uniform 2..230", "elements": [config.min_elements, config.max_elements],
                "systems_from": str(Path(config.systems_from).resolve()) if config.systems_from else None}
    attrs = gstore.new_store_attrs(
        config=asdict(config), vocab=vocab, run_id=run_id, run_dir=ctx.run_dir, checkpoint=None,
        baseline=baseline, train_store=config.train_store, train_fingerprint=train_fp,
        temperatures=[BASELINE_TEMPERATURE], shards=config.shards, per_temp=config.n)
    root = gstore.init_store(Path(config.out), attrs, config.fingerprint(train_fp))
    if root.get("baseline", {}).get("method") != METHOD:
        raise StoreError(f"{config.out} is a generated store of a model run, not a {METHOD} baseline")
    return {"run_id": root["run_id"], "attempt": uuid.uuid4().hex}


def run_baseline(config: BaselineConfig, ctx: RunContext) -> dict[str, Any]:
    """Write every missing shard of the baseline store; rank 0 consolidates (also under mpirun)."""
    from matra_hpc.evaluate.baseline import baseline_shard
    from matra_hpc.generate import store as gstore

    config.validate()
    if ctx.world_size > 1 and ctx.comm is None:
        raise UsageError("a baseline with several ranks needs an MPI communicator (run it under mpirun)")
    out = Path(config.out)
    prep = ctx.on_rank0(_prepare_baseline, config, ctx)
    train_index = None
    if config.train_store:
        from matra_hpc.generate.duplicates import TrainingIndex

        train_index = TrainingIndex(config.train_store)
    systems = None
    if config.systems_from:
        from matra_hpc.evaluate.baseline import chemical_systems

        systems = chemical_systems(config.systems_from, config.min_elements, config.max_elements, config.max_count)
    claims = gstore.TaskClaims(out, prep["attempt"])
    done, skipped = [], 0
    for shard in range(config.shards):
        if gstore.shard_done(out, BASELINE_TEMPERATURE, shard):
            skipped += 1
            continue
        if not claims.claim(shard):
            continue
        started = time.time()
        table, stats = baseline_shard(config, prep["run_id"], shard, train_index, systems)
        manifest = {"run_id": prep["run_id"], "temperature": BASELINE_TEMPERATURE, "shard": shard,
                    "seed": config.seed, "rank": ctx.rank, "seconds": round(time.time() - started, 3), **stats}
        gstore.write_shard(out, BASELINE_TEMPERATURE, shard, table, manifest)
        log.info("rank %d: baseline shard %d: %d rows in %.1fs", ctx.rank, shard, len(table), manifest["seconds"])
        done.append(shard)
    if ctx.comm is not None and ctx.world_size > 1:
        ctx.comm.Barrier()

    def finish() -> dict[str, Any]:
        result = gstore.consolidate(out)
        gstore.clear_claims(out)
        return {"rows": sum(result.rows.values()), "complete": result.complete}

    summary = ctx.on_rank0(finish)
    return {"run_id": prep["run_id"], "store": str(out), "rank": ctx.rank, "shards_done_here": done,
            "shards_skipped": skipped, **(summary or {})}


# ------------------------------------------------------------------ recovery (paper Fig. 3)


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


# ------------------------------------------------------------------ report all


def run_report_all(config: ReportAllConfig, ctx: RunContext) -> dict[str, Any]:
    """Build the report (rank 0) and write the page, its Markdown twin, the JSON and the PNGs."""
    from matra_hpc.evaluate.report import build_report_all, write_report_all

    def build() -> dict[str, Any]:
        report = build_report_all(config)
        files = write_report_all(report, config.out_dir())
        return {"report": report, "files": {k: ([str(p) for p in v] if isinstance(v, list) else str(v))
                                             for k, v in files.items()}}

    return ctx.on_rank0(build)
