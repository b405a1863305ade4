"""Named model configs: ``jobs/models/NAME.yaml`` mapped onto ``ModelConfig``.

The YAML holds the architecture only; ``vocab_size`` comes from the token store the model is
trained on, so one recipe serves every vocabulary version.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from matra_hpc.errors import UsageError
from matra_hpc.model.transformer import ModelConfig
from matra_hpc.util import REPO_ROOT

REPO_MODELS_DIR = REPO_ROOT / "jobs" / "models"


def resolve_model_yaml(name_or_path: str) -> Path:
    """A path to a YAML file, or a NAME looked up in ./jobs/models then the repository's."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        if not candidate.is_file():
            raise UsageError(f"model config {candidate} does not exist")
        return candidate
    for folder in (Path.cwd() / "jobs" / "models", REPO_MODELS_DIR):
        path = folder / f"{name_or_path}.yaml"
        if path.is_file():
            return path
    known = sorted(p.stem for p in REPO_MODELS_DIR.glob("*.yaml"))
    raise UsageError(f"unknown model '{name_or_path}'; known: {', '.join(known)} (or a path to a YAML file)")


def load_model_config(name_or_path: str, vocab_size: int) -> ModelConfig:
    path = resolve_model_yaml(name_or_path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"model config {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise UsageError(f"model config {path} must be a mapping of ModelConfig fields")
    if "vocab_size" in data:
        raise UsageError(f"model config {path} sets vocab_size; it comes from the token store's vocabulary")
    return ModelConfig.from_dict({**data, "vocab_size": vocab_size})
