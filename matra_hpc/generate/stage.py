"""The generate stage: sample temperatures x shards into the generated store, with MPI ranks.

Input: a checkpoint (``load_model``), optionally a token store to flag training duplicates.
Output: the generated store (``store.py``), one shard per (temperature, shard) task.

Invariants:
- a task's seed is derived from (seed, temperature, shard) and its batch layout from
  (rows, batch size) only, so its shard is bit-identical whichever rank runs it;
- ranks pull tasks from a shared queue (atomic claim files, one claim set per attempt), so a
  slow rank never holds the run; rank 0 prepares the store before and consolidates after;
- finished shards are skipped on a rerun: a kill -9 loses at most the shards being written.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from matra_hpc.context import RunContext
from matra_hpc.errors import CheckpointError, StoreError, UsageError
from matra_hpc.generate import store as gstore
from matra_hpc.generate.checks import StructureCheck
from matra_hpc.generate.config import GenerateConfig, task_seed
from matra_hpc.generate.temperatures import temperature_group
from matra_hpc.util import hold_point

log = logging.getLogger(__name__)


def _fingerprint(config: GenerateConfig, checkpoint_hash: str, train_fp: str | None) -> dict[str, Any]:
    return {
        "checkpoint_sha256": checkpoint_hash,
        "temperatures": list(config.temperatures),
        "per_temp": config.per_temp,
        "shards": config.shards,
        "condition": config.condition,
        "seed": config.seed,
        "batch_size": config.batch_size,
        "max_length": config.max_length,
        "value_noise": config.value_noise,
        "min_distance": config.min_distance,
        "max_sites": config.max_sites,
        "train_store": train_fp,
    }


def _prepare_store(config: GenerateConfig, ctx: RunContext) -> dict[str, Any]:
    """Rank 0: resolve the checkpoint once, check it against the vocabulary, create or reopen the store.

    Every rank then loads the resolved directory and checks its hash, so the hash the store
    records is the hash of the weights that sampled it.
    """
    from matra_hpc.generate.duplicates import store_fingerprint
    from matra_hpc.model.checkpoint import describe_checkpoint
    from matra_hpc.tokens import load_vocab

    vocab = load_vocab()
    checkpoint = describe_checkpoint(config.checkpoint)
    meta = checkpoint.meta
    if meta.get("vocab_hash") not in (None, vocab.hash):
        raise CheckpointError(
            f"checkpoint {config.checkpoint} was trained on vocabulary {meta.get('vocab_hash')}, "
            f"this matra-hpc has {vocab.hash}"
        )
    if config.train_store:
        from matra_hpc.data.store import open_token_store

        train_vocab = open_token_store(config.train_store).attrs.get("vocab_hash")
        if train_vocab != vocab.hash:
            # prototype hashes of another vocabulary version are not comparable
            raise StoreError(f"training store {config.train_store} has vocabulary {train_vocab}, "
                             f"this matra-hpc has {vocab.hash}")
    train_fp = store_fingerprint(config.train_store) if config.train_store else None
    ckpt_hash = checkpoint.sha256
    run_id = gstore.run_id_for(config.run_id, ctx.run_dir, "gen")
    attrs = gstore.new_store_attrs(
        config=asdict(config), vocab=vocab, run_id=run_id, run_dir=ctx.run_dir,
        checkpoint={"path": str(Path(config.checkpoint).resolve()), "resolved": str(checkpoint.path),
                    "sha256": ckpt_hash, "step": meta.get("step"), "epoch": meta.get("epoch")},
        train_store=config.train_store, train_fingerprint=train_fp,
        temperatures=config.temperatures, shards=config.shards, per_temp=config.per_temp)
    root_attrs = gstore.init_store(Path(config.out), attrs, _fingerprint(config, ckpt_hash, train_fp))
    return {"run_id": root_attrs["run_id"], "attempt": uuid.uuid4().hex,
            "checkpoint": str(checkpoint.path), "checkpoint_sha256": ckpt_hash}


def run_generate(config: GenerateConfig, ctx: RunContext) -> dict[str, Any]:
    """Sample every (temperature, shard) task not yet in the store; consolidate on rank 0."""

    from matra_hpc.model import load_model
    from matra_hpc.tokens.grammar import Grammar

    config.validate()
    if ctx.world_size > 1 and ctx.comm is None:
        raise UsageError("generate with several ranks needs an MPI communicator (run it under mpirun)")
    condition = config.parsed_condition()
    out = Path(config.out)
    prep = ctx.on_rank0(_prepare_store, config, ctx)
    run_id, attempt = prep["run_id"], prep["attempt"]

    device = config.device or ctx.device
    model, _meta = load_model(prep["checkpoint"], device=device, expect_sha256=prep["checkpoint_sha256"])
    grammar = Grammar(max_sites=config.max_sites, condition=condition)
    settings = config.sampler_settings()
    train_index = None
    if config.train_store:
        from matra_hpc.generate.duplicates import TrainingIndex

        train_index = TrainingIndex(config.train_store)
    claims = gstore.TaskClaims(out, attempt)
    done_here: list[str] = []
    skipped = 0
    pool = _check_pool(config.check_workers)
    pending: SampledTask | None = None
    try:
        for index, (t, shard) in enumerate(config.tasks()):
            if gstore.shard_done(out, t, shard):
                skipped += 1
                continue
            if not claims.claim(index):
                continue
            task = sample_task(model, grammar, config, settings, run_id, t, shard, device, pool)
            # One task deep: the checks of this task run in the pool while the next one samples.
            if pending is not None:
                done_here.append(_finish_task(pending, config, out, ctx.rank, train_index))
                hold_point("generate-shard")
            pending = task
        if pending is not None:
            done_here.append(_finish_task(pending, config, out, ctx.rank, train_index))
            hold_point("generate-shard")
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    if ctx.comm is not None and ctx.world_size > 1:
        ctx.comm.Barrier()
    summary = ctx.on_rank0(_consolidate, out)
    return {"run_id": run_id, "store": str(out), "rank": ctx.rank, "tasks_done_here": done_here,
            "tasks_skipped": skipped, **(summary or {})}


def _consolidate(out: Path) -> dict[str, Any]:
    result = gstore.consolidate(out)
    gstore.clear_claims(out)
    return {"rows": result.rows, "shards_done": result.shards_done, "shards_total": result.shards_total,
            "complete": result.complete}


@dataclass
class SampledTask:
    """A task whose rows are sampled; its checks may still be running in the pool."""

    run_id: str
    temperature: float
    shard: int
    sequences: list
    stats: Any
    checks: list
    """StructureCheck per row, or futures of them."""
    started: float


def _check_pool(workers: int):
    if workers <= 0:
        return None
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn: a forked copy of an MPI rank (or of torch's threads) is not safe to run
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


def sample_task(model, grammar, config: GenerateConfig, settings, run_id: str, temperature: float, shard: int,
                device: str, pool=None) -> SampledTask:
    """Sample one (temperature, shard) task's rows and start their checks (in the pool, if any)."""
    import torch

    from matra_hpc.generate.checks import check_sequence
    from matra_hpc.sample.sampler import SamplingStats, sample_sequences

    started = time.time()
    generator = torch.Generator(device="cpu").manual_seed(task_seed(config.seed, temperature, shard))
    stats = SamplingStats()
    sequences = sample_sequences(model, grammar, config.shard_rows(shard), temperature, generator, settings,
                                 device=device, stats=stats)
    if pool is None:
        checks = [check_sequence(q.tokens, q.values, q.complete, min_distance=config.min_distance)
                  for q in sequences]
    else:
        checks = [pool.submit(check_sequence, q.tokens, q.values, q.complete, min_distance=config.min_distance)
                  for q in sequences]
    return SampledTask(run_id, temperature, shard, sequences, stats, checks, started)


def _finish_task(task: SampledTask, config: GenerateConfig, out: Path, rank: int, train_index) -> str:
    """Collect a task's checks, flag training duplicates, commit its shard atomically."""
    import torch

    from matra_hpc.generate.table import TableBuilder

    builder = TableBuilder()
    tgroup = temperature_group(task.temperature)
    for index, (seq, check) in enumerate(zip(task.sequences, task.checks, strict=True)):
        if not isinstance(check, StructureCheck):
            check = check.result()
        dup_train = bool(train_index is not None and check.prototype_hash
                         and train_index.is_known(check.prototype_hash, check.structure))
        builder.add(f"{task.run_id}:{tgroup}:s{task.shard}:{index}", seq.tokens, seq.values, check, dup_train)
    table = builder.build()
    manifest = {
        "run_id": task.run_id, "temperature": task.temperature, "shard": task.shard,
        "seed": task_seed(config.seed, task.temperature, task.shard), "rank": rank,
        "seconds": round(time.time() - task.started, 3), "forward_calls": task.stats.forward_calls,
        "row_steps": task.stats.row_steps, "torch_threads": torch.get_num_threads(),
        "check_workers": config.check_workers,
    }
    gstore.write_shard(out, task.temperature, task.shard, table, manifest)
    log.info("rank %d: %s shard %d: %d rows in %.1fs", rank, tgroup, task.shard, len(table), manifest["seconds"])
    return f"{tgroup}/s{task.shard}"
