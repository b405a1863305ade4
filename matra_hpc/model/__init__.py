"""The Matra-Genoa transformer (paper II.2, IV.2); see ``transformer.py`` for the API."""

from matra_hpc.model.checkpoint import ResolvedCheckpoint, describe_checkpoint, load_model, resolve_checkpoint
from matra_hpc.model.configs import load_model_config, resolve_model_yaml
from matra_hpc.model.transformer import (
    KVCache,
    LossParts,
    MatraTransformer,
    ModelConfig,
    combine_loss,
    loss_sums,
)

__all__ = [
    "KVCache",
    "LossParts",
    "MatraTransformer",
    "ResolvedCheckpoint",
    "ModelConfig",
    "describe_checkpoint",
    "combine_loss",
    "load_model",
    "load_model_config",
    "loss_sums",
    "resolve_checkpoint",
    "resolve_model_yaml",
]
