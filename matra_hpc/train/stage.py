"""The training stage: ``run_train(TrainConfig, RunContext)`` (paper IV.3).

Input: a consolidated token store (docs/contracts.md section C). Output: a directory ``out``
with checkpoints (``checkpoints/step_*``, see ``checkpoint.py``), the best model by validation
loss (``best/``), ``metrics.jsonl``, ``loss.png`` and ``train_config.json``.

Invariants:
- One optimizer step = one global batch of ``global_batch`` rows, whatever the number of ranks:
  every rank builds the same epoch plan and takes its rows of each batch; each rank's loss is
  its *sum* divided by the global batch's counts, so the DDP-averaged gradient equals the
  one-process gradient (up to float summation order).
- A run started again with the same ``out`` resumes from the newest valid checkpoint, at the
  same step, epoch and batch inside the epoch, with the optimizer, learning-rate position and
  RNG states restored; metrics past that step are dropped so the curve continues.
- A checkpoint trained on another vocabulary is never resumed (CheckpointError).
- SIGTERM (scheduler time limit, preemption, ``matra-hpc cancel``) ends the step in progress,
  writes a checkpoint and returns; a requeued job resumes from it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from matra_hpc import __version__
from matra_hpc.context import RunContext
from matra_hpc.data.dataset import (
    Batch,
    GlobalBatchShard,
    TokenStore,
    TokenStoreDataset,
    collate,
    describe_store,
)
from matra_hpc.errors import CheckpointError, UsageError
from matra_hpc.model import MatraTransformer, ModelConfig, combine_loss, load_model_config, loss_sums
from matra_hpc.model.checkpoint import (
    BEST_DIR,
    find_latest_valid,
    load_train_state,
    load_weights,
    save_checkpoint,
    save_model_dir,
)
from matra_hpc.model.slots import KIND_NAMES, VALUE_KINDS, value_abs_errors
from matra_hpc.model.transformer import point_values, target_cell_atoms, target_slot_kinds
from matra_hpc.tokens.format import require_token_format
from matra_hpc.train.config import TrainConfig
from matra_hpc.train.metrics import PLOT_FILE, MetricsLog, plot_loss_curve
from matra_hpc.util import hold_point

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    out: str
    step: int
    epoch: int
    status: str  # "finished", "early_stopped", "max_steps", "time_limit", "signal"
    best_val_loss: float | None
    last_checkpoint: str | None


def one_cycle_lr(step: int, total: int, config: TrainConfig) -> float:
    """Linear one-cycle: lr_max/div -> lr_max over pct_start, then linearly down to the end."""
    start = config.lr_max / config.div_factor
    end = start / config.final_div_factor
    warm = max(int(round(config.pct_start * total)), 1)
    if step < warm:
        return start + (config.lr_max - start) * step / warm
    frac = min((step - warm) / max(total - warm, 1), 1.0)
    return config.lr_max + (end - config.lr_max) * frac


def _kind_means(ds: TokenStoreDataset, max_rows: int = 50_000) -> list[float]:
    """The per-kind mean predictor: the constant with the smallest mean error over the first
    ``max_rows`` training rows (coordinates: the periodic median on a 1/200 grid; lengths and
    angles: the median)."""
    from matra_hpc.model.slots import COORD, sequence_slot_kinds

    n = min(len(ds), max_rows)
    if n == 0:
        return [0.0] * len(VALUE_KINDS)
    tokens, values, _ = ds.store.read_span(int(ds.rows[0]), int(ds.rows[n - 1]) + 1)
    lo = int(ds.store.offsets[ds.rows[0]])
    kinds = np.zeros(len(tokens), dtype=np.int8)  # val rows in between stay NONE
    for row in ds.rows[:n]:
        a, b = int(ds.store.offsets[row]) - lo, int(ds.store.offsets[row + 1]) - lo
        kinds[a:b] = sequence_slot_kinds(tokens[a:b])
    means = []
    for kind in VALUE_KINDS:
        v = values[kinds == kind]
        if kind == COORD and len(v):
            grid = np.linspace(0.0, 1.0, 201)[:-1]
            d = np.abs(v[None, :20_000] - grid[:, None]) % 1.0
            means.append(float(grid[np.argmin(np.minimum(d, 1.0 - d).mean(axis=1))]))
        else:
            means.append(float(np.median(v)) if len(v) else 0.0)
    return means


class _StopFlag:
    """Set by SIGTERM/SIGUSR1 so the loop can checkpoint at the next step boundary."""

    def __init__(self) -> None:
        self.signalled = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals to the caller
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        log.warning("received signal %d: checkpointing at the end of this step", signum)
        self.signalled = True

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _Trainer:
    def __init__(self, config: TrainConfig, ctx: RunContext) -> None:
        self.config = config
        self.ctx = ctx
        self.distributed = ctx.world_size > 1
        self.device = torch.device(config.device or ctx.device)
        if self.device.type == "cuda":
            if self.device.index is None:  # "--device cuda": this process's GPU on the node
                self.device = torch.device("cuda", ctx.local_rank % max(torch.cuda.device_count(), 1))
            torch.cuda.set_device(self.device)
        self.out = Path(config.out)
        self.is_main = ctx.rank == 0
        self.started = time.monotonic()
        self.seconds_before = 0.0  # training time of earlier attempts (from the checkpoint)

    # -- distributed helpers -------------------------------------------------------------
    def _init_process_group(self) -> None:
        if not self.distributed or dist.is_initialized():
            return
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        # torchrun (or the launch layer) sets MASTER_ADDR/MASTER_PORT; env:// reads them.
        dist.init_process_group(backend, init_method="env://", rank=self.ctx.rank, world_size=self.ctx.world_size)

    def _all_sum(self, values: list[float]) -> list[float]:
        if not self.distributed:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def _barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    # -- setup ---------------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.config
        self._init_process_group()
        self.store = TokenStore(cfg.data)
        model_cfg = load_model_config(cfg.model, self.store.vocab_size)
        if cfg.dropout is not None:
            model_cfg.dropout = cfg.dropout
        if cfg.cont_loss_weight is not None:
            model_cfg.cont_loss_weight = cfg.cont_loss_weight
        self.model_cfg: ModelConfig = model_cfg
        self.train_ds = TokenStoreDataset(self.store, "train", model_cfg.max_len, cfg.window_batches)
        self.val_ds = TokenStoreDataset(self.store, "val", model_cfg.max_len, cfg.window_batches)
        if len(self.train_ds) == 0:
            raise UsageError(f"token store {cfg.data} has no training rows")
        self.steps_per_epoch = self.train_ds.n_batches(cfg.global_batch)
        self.schedule_steps = cfg.schedule_steps or cfg.max_steps or cfg.epochs * self.steps_per_epoch
        store_info = describe_store(self.store) if self.is_main else None
        self.store_info = self.ctx.broadcast(store_info)
        # the per-kind mean predictor the validation errors are compared with
        self.kind_means = self.ctx.broadcast(_kind_means(self.train_ds) if self.is_main else None)
        self.last_val: dict[str, float] | None = None

        torch.manual_seed(cfg.seed)  # same initial weights on every rank
        self.model = MatraTransformer(model_cfg).to(self.device)
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=cfg.lr_max, betas=cfg.betas, weight_decay=cfg.weight_decay
        )
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best_val: float | None = None
        self.bad_epochs = 0
        self.finished_status: str | None = None
        self.last_checkpoint: str | None = None
        torch.manual_seed(cfg.seed + 1 + self.ctx.rank)  # dropout streams differ per rank
        self._resume()

        self.forward_model: Any = self.model
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward_model = DistributedDataParallel(self.model, device_ids=ids)
        if cfg.compile:
            # Row lengths vary from batch to batch: one graph with a symbolic length, not one per length.
            self.forward_model = torch.compile(self.forward_model, dynamic=True)
        use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and self.device.type == "cuda")
        self.autocast = (
            (lambda: torch.autocast(device_type=self.device.type, dtype=torch.bfloat16))
            if use_bf16 else contextlib.nullcontext
        )
        self.metrics = MetricsLog(self.out, enabled=self.is_main)
        if self.is_main:
            (self.out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=1, sort_keys=True))
            log.info(
                "training %s (%.2fM parameters) on %s: %d train / %d val rows, %d steps per epoch, "
                "%d rank(s), device %s, starting at step %d epoch %d",
                cfg.model, self.model.num_params() / 1e6, cfg.data, len(self.train_ds), len(self.val_ds),
                self.steps_per_epoch, self.ctx.world_size, self.device, self.step, self.epoch,
            )

    def _resume(self) -> None:
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        self._barrier()
        found = find_latest_valid(self.out) if self.is_main else None
        name = self.ctx.broadcast(found.path.name if found is not None else None)
        if name is None:
            return
        if found is None or found.path.name != name:
            from matra_hpc.model.checkpoint import CHECKPOINTS_DIR, Checkpoint, check_dir

            path = self.out / CHECKPOINTS_DIR / name
            found = Checkpoint(path, check_dir(path))
        meta = found.meta
        require_token_format(meta.get("token_format"), f"checkpoint {found.path}",
                             "refusing to resume from it (use a new --out)", CheckpointError)
        if meta.get("vocab_hash") != self.store.vocab_hash:
            raise CheckpointError(
                f"checkpoint {found.path} was trained with vocabulary {meta.get('vocab_hash')}, but {self.config.data} "
                f"uses {self.store.vocab_hash}: refusing to resume (use a new --out)"
            )
        if meta.get("model_config") != self.model_cfg.to_dict():
            raise CheckpointError(
                f"checkpoint {found.path} has another model config than --model {self.config.model}: "
                "refusing to resume (use the same model or a new --out)"
            )
        stored = (meta.get("token_store") or {}).get("content_hash")
        if stored != self.store_info["content_hash"] and self.is_main:
            log.warning("the token store changed since checkpoint %s (content hash %s, now %s); resuming anyway",
                        found.path.name, stored, self.store_info["content_hash"])
        load_weights(found, self.model)
        state = load_train_state(found)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self.best_val = None if state["best_val"] is None else float(state["best_val"])
        self.bad_epochs = int(state["bad_epochs"])
        self.seconds_before = float(state.get("train_seconds", 0.0))
        self.finished_status = state.get("finished_status") or None
        rng = state.get("rng_torch") or []
        if self.ctx.rank < len(rng):
            torch.set_rng_state(rng[self.ctx.rank])
        cuda_rng = state.get("rng_cuda") or []
        if self.device.type == "cuda" and self.ctx.rank < len(cuda_rng):
            torch.cuda.set_rng_state(cuda_rng[self.ctx.rank], self.device)
        self.last_checkpoint = str(found.path)
        if self.is_main:
            log.info("resumed from %s (step %d, epoch %d, batch %d)", found.path, self.step, self.epoch, self.batch_in_epoch)
            MetricsLog(self.out).truncate_after(self.step)
            MetricsLog(self.out).write({"kind": "event", "event": "resume", "step": self.step, "epoch": self.epoch,
                                        "checkpoint": found.path.name, "time": time.time()})

    # -- checkpoints ---------------------------------------------------------------------
    def _meta(self) -> dict[str, Any]:
        return {
            "model_config": self.model_cfg.to_dict(),
            "vocab_hash": self.store.vocab_hash,
            "vocab": self.store.attrs.get("vocab"),
            "token_store": self.store_info,
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "best_val_loss": self.best_val,
            "val": self.last_val,
            "train_config": asdict(self.config),
            "world_size": self.ctx.world_size,
            "created_by": {"package": __version__},
            "time": time.time(),
        }

    def checkpoint(self) -> None:
        rng = [torch.get_rng_state()]
        cuda_rng = [torch.cuda.get_rng_state(self.device)] if self.device.type == "cuda" else []
        if self.distributed:
            gathered: list[Any] = [None] * self.ctx.world_size
            dist.all_gather_object(gathered, (rng[0], cuda_rng[0] if cuda_rng else None))
            rng = [g[0] for g in gathered]
            cuda_rng = [g[1] for g in gathered if g[1] is not None]
        if self.is_main:
            state = {
                "optimizer": self.optimizer.state_dict(),
                "step": self.step,
                "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch,
                "best_val": self.best_val,
                "bad_epochs": self.bad_epochs,
                "train_seconds": self.train_seconds(),
                "finished_status": self.finished_status or "",
                "rng_torch": rng,
                "rng_cuda": cuda_rng,
            }
            path = save_checkpoint(self.out, self.model, state, self._meta(), self.config.keep_checkpoints)
            self.last_checkpoint = str(path)
            hold_point("train-checkpoint")
        self.last_ckpt_time = time.monotonic()
        self.ckpt_step = self.step
        self._barrier()

    # -- steps ---------------------------------------------------------------------------
    def _dummy_batch(self) -> Batch:
        import numpy as np

        return collate([(np.array([2], dtype=np.int64), np.array([np.nan]))])

    def train_step(self, shard: GlobalBatchShard) -> tuple[float, float, list[float]]:
        """One optimizer step on this rank's share; returns this rank's (CE sum, value loss sum,
        [unweighted value loss sum per kind..., value count per kind...])."""
        cfg = self.config
        lr = one_cycle_lr(self.step, self.schedule_steps, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.forward_model.train()
        self.optimizer.zero_grad(set_to_none=True)
        micro = shard.micro_batches
        # A rank with no rows (last, small batch) still joins the gradient all-reduce.
        scale = 1.0 if micro else 0.0
        micro = micro or [self._dummy_batch()]
        ce_total = mse_total = 0.0
        kind_total = [0.0] * (2 * len(VALUE_KINDS))
        for i, mb in enumerate(micro):
            mb = mb.to(self.device)
            # the kind of each target is the model's "next slot" input at that position
            kinds, atoms = target_slot_kinds(mb.target_tokens), target_cell_atoms(mb.target_tokens)
            sync = i == len(micro) - 1 or not self.distributed
            ctx = contextlib.nullcontext() if sync else self.forward_model.no_sync()
            with ctx:
                with self.autocast():
                    logits, cont = self.forward_model(mb.tokens, mb.values, kinds=kinds)
                parts = loss_sums(logits, cont, mb.target_tokens, mb.target_values, self.model_cfg, kinds, atoms)
                # Sum / global count, times world size to undo DDP's average over ranks.
                loss = combine_loss(parts, shard.n_tokens, shard.n_values, self.model_cfg) * self.ctx.world_size * scale
                loss.backward()
            ce_total += float(parts.ce_sum.detach()) * scale
            mse_total += float(parts.mse_sum.detach()) * scale
            kind_total = [a + b * scale for a, b in zip(kind_total, parts.kind_sums + parts.kind_counts, strict=True)]
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.step += 1
        return ce_total, mse_total, kind_total

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Validation loss, and per kind of value: the value loss and the mean absolute error of
        the model's point value (coordinates: periodic distance; lengths: A; angles: degrees)."""
        self.forward_model.eval()
        n_kinds = len(VALUE_KINDS)
        sums = [0.0] * (4 + 4 * n_kinds)  # ce, value loss, tokens, values | per kind: loss, |err|, count | base
        for shard in self.val_ds.iter_eval_batches(self.config.val_batch, self.ctx.rank, self.ctx.world_size):
            for mb in shard.micro_batches:
                mb = mb.to(self.device)
                kinds, atoms = target_slot_kinds(mb.target_tokens), target_cell_atoms(mb.target_tokens)
                with self.autocast():
                    logits, cont = self.model(mb.tokens, mb.values, kinds=kinds)
                parts = loss_sums(logits, cont, mb.target_tokens, mb.target_values, self.model_cfg, kinds, atoms)
                errors = value_abs_errors(point_values(self.model, cont, kinds, atoms), mb.target_values, kinds)
                constant = torch.tensor([0.0, *self.kind_means])[kinds.cpu()]
                base = value_abs_errors(constant, mb.target_values, kinds)
                sums[0] += float(parts.ce_sum)
                sums[1] += float(parts.mse_sum)
                sums[2] += parts.n_tokens
                sums[3] += parts.n_values
                for j, kind in enumerate(VALUE_KINDS):
                    sums[4 + 3 * j] += parts.kind_sums[j]
                    sums[5 + 3 * j] += float(errors[kind].sum())
                    sums[6 + 3 * j] += parts.kind_counts[j]
                    sums[4 + 3 * n_kinds + j] += float(base[kind].sum())
        sums = self._all_sum(sums)
        ce_mean = sums[0] / max(sums[2], 1)
        mse_mean = sums[1] / max(sums[3], 1)
        out = {"loss": ce_mean + self.model_cfg.cont_loss_weight * mse_mean, "ce": ce_mean, "mse": mse_mean,
               "n_rows": len(self.val_ds)}
        for j, kind in enumerate(VALUE_KINDS):
            count = sums[6 + 3 * j]
            if count:
                out[f"vloss_{KIND_NAMES[kind]}"] = sums[4 + 3 * j] / count
                out[f"mae_{KIND_NAMES[kind]}"] = sums[5 + 3 * j] / count
                out[f"base_mae_{KIND_NAMES[kind]}"] = sums[4 + 3 * n_kinds + j] / count
        self.last_val = out
        return out

    def _decide(self, stop: _StopFlag) -> tuple[str | None, bool]:
        """(reason to stop or None, checkpoint due), agreed by every rank in one all-reduce."""
        cfg = self.config
        local = [
            stop.signalled,
            cfg.max_steps is not None and self.step >= cfg.max_steps,
            cfg.max_minutes is not None and self.train_seconds() >= cfg.max_minutes * 60,
            bool(cfg.ckpt_every_steps and self.step % cfg.ckpt_every_steps == 0)
            or time.monotonic() - self.last_ckpt_time >= cfg.ckpt_every_minutes * 60,
        ]
        flags = self._all_sum([1.0 if x else 0.0 for x in local])
        reason = next((name for name, value in zip(("signal", "max_steps", "time_limit"), flags, strict=False)
                       if value > 0), None)
        return reason, flags[3] > 0

    def train_seconds(self) -> float:
        """Training time of the whole run: earlier attempts up to their checkpoint, plus this one."""
        return self.seconds_before + time.monotonic() - self.run_started

    def end_epoch(self) -> bool:
        """Validation, early stopping, best model, plot; True when training should stop."""
        cfg = self.config
        val = self.validate() if len(self.val_ds) else None
        self.epoch += 1
        self.batch_in_epoch = 0
        stop = False
        if val is not None:
            improved = self.best_val is None or val["loss"] < self.best_val - cfg.min_delta
            if improved:
                self.best_val = val["loss"]
                self.bad_epochs = 0
                if self.is_main:
                    save_model_dir(self.out / BEST_DIR, self.model, self._meta())
            else:
                self.bad_epochs += 1
                stop = self.bad_epochs >= cfg.patience
            self.metrics.write({"kind": "val", "step": self.step, "epoch": self.epoch, **val,
                                "best": self.best_val, "bad_epochs": self.bad_epochs, "time": time.time()})
        # Drawing takes a fraction of a second: at most once a minute, and at the end of the run.
        if self.is_main and time.monotonic() - self.last_plot >= 60:
            plot_loss_curve(self.metrics.path, self.out / PLOT_FILE)
            self.last_plot = time.monotonic()
        return stop

    def run(self) -> TrainResult:
        cfg = self.config
        self.run_started = time.monotonic()
        self.last_ckpt_time = time.monotonic()
        self.last_plot = time.monotonic()
        self.ckpt_step = self.step if self.last_checkpoint else -1
        if self.finished_status:
            log.info("training in %s already finished (%s) at step %d", self.out, self.finished_status, self.step)
            return self._result(self.finished_status)
        status = "finished"
        window_t0 = time.monotonic()
        window_rows = window_tokens = 0
        ce_acc = mse_acc = tok_acc = val_acc = 0.0
        kind_acc = [0.0] * (2 * len(VALUE_KINDS))
        with _StopFlag() as stop:
            while self.epoch < cfg.epochs:
                plan = self.train_ds.epoch_plan(cfg.global_batch, cfg.seed, self.epoch)
                stopped, _ = self._decide(stop)  # e.g. resumed at max_steps, or signalled meanwhile
                for shard in self.train_ds.iter_batches(
                    plan, self.batch_in_epoch, self.ctx.rank, self.ctx.world_size, cfg.micro_batch
                ):
                    if stopped:
                        break
                    ce, mse, kind_sums = self.train_step(shard)
                    self.batch_in_epoch = shard.index + 1
                    ce_acc += ce
                    mse_acc += mse
                    kind_acc = [a + b for a, b in zip(kind_acc, kind_sums, strict=True)]
                    tok_acc += shard.n_tokens
                    val_acc += shard.n_values
                    window_rows += shard.n_rows
                    window_tokens += shard.n_tokens
                    if self.step % cfg.log_every == 0:
                        ce_acc, mse_acc, *kind_acc = self._all_sum([ce_acc, mse_acc, *kind_acc])
                        elapsed = time.monotonic() - window_t0
                        ce_mean, mse_mean = ce_acc / max(tok_acc, 1), mse_acc / max(val_acc, 1)
                        n_kinds = len(VALUE_KINDS)
                        per_kind = {f"vloss_{KIND_NAMES[k]}": kind_acc[j] / kind_acc[n_kinds + j]
                                    for j, k in enumerate(VALUE_KINDS) if kind_acc[n_kinds + j]}
                        self.metrics.write({
                            "kind": "train", "step": self.step, "epoch": self.epoch,
                            "loss": ce_mean + self.model_cfg.cont_loss_weight * mse_mean, "ce": ce_mean,
                            "mse": mse_mean, **per_kind, "lr": self.optimizer.param_groups[0]["lr"],
                            "seq_per_s": window_rows / elapsed, "tok_per_s": window_tokens / elapsed,
                            "time": time.time(),
                        })
                        window_t0 = time.monotonic()
                        window_rows = window_tokens = 0
                        ce_acc = mse_acc = tok_acc = val_acc = 0.0
                        kind_acc = [0.0] * (2 * n_kinds)
                    if self.batch_in_epoch == len(plan):
                        break  # the epoch's end is checkpointed after validation
                    stopped, due = self._decide(stop)
                    if due or stopped:
                        self.checkpoint()
                if stopped:
                    if self.ckpt_step != self.step:
                        self.checkpoint()
                    status = stopped
                    break
                early = self.end_epoch()
                if early or self.epoch >= cfg.epochs:
                    self.finished_status = "early_stopped" if early else "finished"
                _, due = self._decide(stop)
                if self.finished_status or self.epoch % cfg.ckpt_every_epochs == 0 or due:
                    self.checkpoint()
                if self.finished_status:
                    status = self.finished_status
                    break
        if self.is_main:
            plot_loss_curve(self.metrics.path, self.out / PLOT_FILE)
            log.info("training stopped (%s) at step %d, epoch %d; best validation loss %s",
                     status, self.step, self.epoch, self.best_val)
        return self._result(status)

    def _result(self, status: str) -> TrainResult:
        return TrainResult(str(self.out), self.step, self.epoch, status, self.best_val, self.last_checkpoint)


def run_train(config: TrainConfig, ctx: RunContext) -> TrainResult:
    """Train (or resume training) the model of ``config.model`` on ``config.data`` into ``config.out``."""
    config.validate()
    trainer = _Trainer(config, ctx)
    try:
        trainer.setup()
        return trainer.run()
    finally:
        if trainer.distributed and dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.barrier()
            dist.destroy_process_group()


__all__ = ["TrainConfig", "TrainResult", "one_cycle_lr", "run_train"]
