"""The training stage (paper IV.3): ``run_train(TrainConfig, RunContext)``.

``TrainConfig`` is importable without torch; the rest loads torch on first use.
"""

from __future__ import annotations

from typing import Any

from matra_hpc.train.config import TrainConfig

__all__ = ["TrainConfig", "TrainResult", "one_cycle_lr", "run_train"]


def __getattr__(name: str) -> Any:
    if name in ("TrainResult", "one_cycle_lr", "run_train"):
        from matra_hpc.train import stage

        return getattr(stage, name)
    raise AttributeError(name)
