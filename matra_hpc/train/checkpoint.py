"""Training checkpoints: self-describing, written atomically, loaded without unpickling.

Layout of a training output directory::

    OUT/checkpoints/step_00001200/   model.safetensors, train_state.pt, meta.json
    OUT/best/                        model.safetensors, meta.json  (lowest validation loss)

``meta.json`` is written last and records the model config, vocab hash, token store path and
content hash, step, epoch, position in the epoch, and the size and sha256 of every other file,
so a checkpoint cut short (disk full, node lost while copying) is recognised and skipped.
A checkpoint is first written to ``.step_XXXXXXXX.partial/`` and then renamed into place.
``train_state.pt`` holds only tensors, numbers and strings (optimizer state, RNG states, data
position), read back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from matra_hpc.errors import CheckpointError
from matra_hpc.model.transformer import META_FILE, WEIGHTS_FILE, MatraTransformer

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "matra-hpc/checkpoint/1"
STATE_FILE = "train_state.pt"
CHECKPOINTS_DIR = "checkpoints"
BEST_DIR = "best"


@dataclass
class Checkpoint:
    path: Path
    meta: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.meta["step"])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_dir_atomically(final: Path, files: dict[str, Any], meta: dict[str, Any]) -> None:
    """Write ``files`` (name -> writer(path)) and then meta.json into ``final``, atomically."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    listing = {}
    for name, writer in files.items():
        path = tmp / name
        writer(path)
        with path.open("rb") as handle:
            os.fsync(handle.fileno())
        listing[name] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    meta = {**meta, "files": listing}
    meta_tmp = tmp / META_FILE
    meta_tmp.write_text(json.dumps(meta, indent=1, sort_keys=True))
    with meta_tmp.open("rb") as handle:
        os.fsync(handle.fileno())
    _fsync_dir(tmp)
    if final.exists():
        # Same step written again (after a resume): move the old one aside, then drop it.
        old = final.parent / f".{final.name}.old"
        if old.exists():
            shutil.rmtree(old)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
    _fsync_dir(final.parent)


def model_state(model: MatraTransformer) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or non-contiguous storage; clone to plain contiguous tensors.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def save_checkpoint(
    out_dir: Path, model: MatraTransformer, train_state: dict[str, Any], meta: dict[str, Any], keep: int
) -> Path:
    """Write ``checkpoints/step_<step>/`` and keep only the ``keep`` newest checkpoints."""
    from safetensors.torch import save_file

    step = int(meta["step"])
    final = out_dir / CHECKPOINTS_DIR / f"step_{step:08d}"
    weights = model_state(model)
    _write_dir_atomically(
        final,
        {
            WEIGHTS_FILE: lambda p: save_file(weights, str(p)),
            STATE_FILE: lambda p: torch.save(train_state, p),
        },
        {"format": CHECKPOINT_FORMAT, **meta},
    )
    existing = sorted((out_dir / CHECKPOINTS_DIR).glob("step_*"))
    for stale in existing[: max(len(existing) - keep, 0)]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def save_model_dir(path: Path, model: MatraTransformer, meta: dict[str, Any]) -> None:
    """Weights + meta only (the ``best/`` export the sampler loads)."""
    from safetensors.torch import save_file

    weights = model_state(model)
    _write_dir_atomically(path, {WEIGHTS_FILE: lambda p: save_file(weights, str(p))},
                          {"format": CHECKPOINT_FORMAT, **meta})


def check_dir(path: Path) -> dict[str, Any]:
    """The metadata of a complete checkpoint directory; CheckpointError says what is wrong."""
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{path} has no {META_FILE} (never finished writing)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{meta_path} is unreadable: {exc}") from exc
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint (format {meta.get('format')!r})")
    for name, expected in meta.get("files", {}).items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file} is missing")
        size = file.stat().st_size
        if size != expected["size"]:
            raise CheckpointError(f"{file} is truncated or altered: {size} bytes, expected {expected['size']}")
        if _sha256(file) != expected["sha256"]:
            raise CheckpointError(f"{file} is corrupt: its sha256 does not match {META_FILE}")
    return meta


def find_latest_valid(out_dir: Path) -> Checkpoint | None:
    """The newest checkpoint that checks out; each broken newer one is named in a warning."""
    folder = Path(out_dir) / CHECKPOINTS_DIR
    if not folder.is_dir():
        return None
    for path in sorted(folder.glob("step_*"), reverse=True):
        try:
            return Checkpoint(path, check_dir(path))
        except CheckpointError as exc:
            log.warning("skipping checkpoint %s: %s; falling back to the previous one", path.name, exc)
    return None


def find_model_dir(out_dir: Path) -> Path:
    """For ``load_model(OUT)``: ``OUT/best`` if it checks out, else the newest valid checkpoint.

    ``OUT/checkpoints`` itself is accepted too (its newest valid checkpoint).
    """
    out_dir = Path(out_dir)
    if out_dir.name == CHECKPOINTS_DIR and not (out_dir / CHECKPOINTS_DIR).exists():
        out_dir = out_dir.parent
    best = out_dir / BEST_DIR
    if best.is_dir():
        try:
            check_dir(best)
            return best
        except CheckpointError as exc:
            log.warning("skipping %s: %s", best, exc)
    latest = find_latest_valid(out_dir)
    if latest is None:
        raise CheckpointError(f"{out_dir} holds no valid checkpoint (no best/ and no checkpoints/step_*)")
    return latest.path


def load_train_state(checkpoint: Checkpoint) -> dict[str, Any]:
    try:
        return torch.load(checkpoint.path / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError ...
        raise CheckpointError(f"{checkpoint.path / STATE_FILE} is unreadable: {exc}") from exc


def load_weights(checkpoint: Checkpoint, model: MatraTransformer) -> None:
    from safetensors.torch import load_file

    state = load_file(str(checkpoint.path / WEIGHTS_FILE))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{checkpoint.path} does not fit the model being trained: {exc}") from exc
