"""``TrainConfig``: everything a training run depends on (no torch import, so the CLI stays fast)."""

from __future__ import annotations

from dataclasses import dataclass

from matra_hpc.errors import UsageError
from matra_hpc.util import absolute_path


@dataclass
class TrainConfig:
    """Everything a training run depends on; defaults are the paper's (IV.3)."""

    data: str
    """Token store (Zarr) to train on; its val split gives the validation loss."""
    out: str
    """Output directory: checkpoints, best model, metrics. Running again resumes in it."""
    model: str = "tiny"
    """Name of ``jobs/models/NAME.yaml`` or a path to such a YAML file."""
    epochs: int = 1000
    global_batch: int = 256
    """Rows per optimizer step, summed over ranks."""
    micro_batch: int | None = None
    """Rows per forward pass on one rank (gradient accumulation); None: the rank's whole share."""
    lr_max: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-3
    pct_start: float = 0.3
    """Fraction of the schedule spent rising linearly to ``lr_max``; the rest falls linearly."""
    div_factor: float = 25.0
    """Start learning rate = lr_max / div_factor."""
    final_div_factor: float = 1e4
    """End learning rate = start / final_div_factor."""
    schedule_steps: int | None = None
    """Length of the one-cycle schedule; default ``epochs`` (or ``max_steps``) worth of steps."""
    grad_clip: float | None = 1.0
    patience: int = 10
    """Epochs without a significant validation improvement before stopping early."""
    min_delta: float = 1e-4
    """Improvement of the validation loss that counts as significant."""
    seed: int = 0
    max_steps: int | None = None
    """Stop after this many optimizer steps in total (checkpoint first)."""
    max_minutes: float | None = None
    """Stop after this many minutes of training in total, resumed attempts included (checkpoint
    first); run again with a larger value to continue."""
    ckpt_every_steps: int | None = None
    ckpt_every_minutes: float = 10.0
    ckpt_every_epochs: int = 1
    """Checkpoint at the end of every N-th epoch (and always at the end of the run)."""
    keep_checkpoints: int = 3
    log_every: int = 10
    val_batch: int = 256
    precision: str = "auto"
    """``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``bf16`` or ``fp32``."""
    compile: bool = False
    """torch.compile the model."""
    device: str | None = None
    """Override the device the launch layer chose (``cpu``, ``cuda``, ``cuda:1``)."""
    dropout: float | None = None
    """Override the model config's dropout."""
    cont_loss_weight: float | None = None
    """Override the model config's w in CE + w * MSE."""
    window_batches: int = 64
    """Global batches per read window (rows shuffled and length-bucketed inside a window)."""

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        # absolute: a job may start in another working directory than the submitting shell
        self.data, self.out = absolute_path(self.data), absolute_path(self.out)

    def validate(self) -> None:
        """Bad settings are a UsageError (``run_train`` and ``submit``; the store is checked on opening)."""
        if self.global_batch < 1 or self.epochs < 1:
            raise UsageError("global_batch and epochs must be positive")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise UsageError(f"precision must be auto, bf16 or fp32, not {self.precision!r}")
