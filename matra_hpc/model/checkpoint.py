"""Model checkpoints: written atomically, checked, found and loaded without unpickling.

The model package owns its checkpoint format: training writes it (``save_checkpoint``,
``save_model_dir``), generation and later stages read it (``resolve_checkpoint``,
``load_model``). Nothing here imports a stage.

Layout of a training output directory::

    OUT/checkpoints/step_00001200/   model.safetensors, train_state.pt, meta.json
    OUT/best/                        model.safetensors, meta.json  (lowest validation loss)

``meta.json`` is written last and records the model config, vocab hash, token store path and
content hash, step, epoch, position in the epoch, and the size and sha256 of every other file,
so a checkpoint cut short (disk full, node lost while copying) is recognised and skipped.
A checkpoint is first written to ``.step_XXXXXXXX.partial/`` and then renamed into place.
``train_state.pt`` holds only tensors, numbers and strings (optimizer state, RNG states, data
position), read back with ``torch.load(weights_only=True)``.

A reader resolves a path once (``resolve_checkpoint``: ``best/``, else the newest valid
checkpoint) and passes the resolved directory on. ``load_model(path, expect_sha256=...)``
hashes the very bytes it loads, so a store can record the hash of the weights actually used
even when training replaces ``best/`` between two reads.
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
from matra_hpc.model.transformer import MatraTransformer, ModelConfig
from matra_hpc.tokens.format import TOKEN_FORMAT, require_token_format
from matra_hpc.util import file_sha256, fsync_dir

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
META_FILE = "meta.json"
CHECKPOINT_FORMAT = "matra-hpc/checkpoint/2"
"""Format 2: model configs with typed value slots and the mixture value head (docs/contracts.md).
Checkpoints of another format (1: before them) are refused, never loaded with guessed fields."""
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
        listing[name] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
    # The sequences a model learnt: readers refuse another format (matra_hpc.tokens.format).
    meta = {"token_format": TOKEN_FORMAT, **meta, "files": listing}
    meta_tmp = tmp / META_FILE
    meta_tmp.write_text(json.dumps(meta, indent=1, sort_keys=True))
    with meta_tmp.open("rb") as handle:
        os.fsync(handle.fileno())
    fsync_dir(tmp)
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
    fsync_dir(final.parent)


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
    check_format(meta, path)
    for name, expected in meta.get("files", {}).items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file} is missing")
        size = file.stat().st_size
        if size != expected["size"]:
            raise CheckpointError(f"{file} is truncated or altered: {size} bytes, expected {expected['size']}")
        if file_sha256(file) != expected["sha256"]:
            raise CheckpointError(f"{file} is corrupt: its sha256 does not match {META_FILE}")
    return meta


def check_format(meta: dict[str, Any], path: str | Path) -> None:
    """CheckpointError unless ``meta`` is of this version's ``CHECKPOINT_FORMAT``."""
    found = meta.get("format")
    if found != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is a checkpoint of format {found!r}, this matra-hpc reads {CHECKPOINT_FORMAT} "
            "(format 2 changed the value head: typed value slots, mixture head); train a new model"
        )


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


def resolve_checkpoint(path: str | Path) -> Path:
    """The one checkpoint directory a path names; look it up once and pass the result on.

    ``path`` is a checkpoint directory (it holds ``meta.json``), a training output directory
    (its ``best/`` if that checks out, else its newest valid checkpoint) or its
    ``checkpoints/`` folder (the newest valid one there).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    if (path / META_FILE).exists():
        return path.resolve()
    return _find_model_dir(path).resolve()


def _find_model_dir(out_dir: Path) -> Path:
    if out_dir.name == CHECKPOINTS_DIR and not (out_dir / CHECKPOINTS_DIR).exists():
        out_dir = out_dir.parent
    best = out_dir / BEST_DIR
    why = ""
    if best.is_dir():
        try:
            check_dir(best)
            return best
        except CheckpointError as exc:
            log.warning("skipping %s: %s", best, exc)
            why = f"; {BEST_DIR}/: {exc}"
    latest = find_latest_valid(out_dir)
    if latest is None:
        raise CheckpointError(f"{out_dir} holds no valid checkpoint (no best/ and no checkpoints/step_*){why}")
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


def _read_model_files(path: Path) -> tuple[bytes, bytes]:
    try:
        return (path / META_FILE).read_bytes(), (path / WEIGHTS_FILE).read_bytes()
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(exc).__name__}: {exc})") from exc


def _files_sha256(meta_bytes: bytes, weights_bytes: bytes) -> str:
    # file name then content, meta first: the model a store was generated with
    digest = hashlib.sha256()
    for name, data in ((META_FILE, meta_bytes), (WEIGHTS_FILE, weights_bytes)):
        digest.update(name.encode())
        digest.update(data)
    return digest.hexdigest()


@dataclass(frozen=True)
class ResolvedCheckpoint:
    """One checkpoint, looked up once: its directory, metadata and the hash of its files."""

    path: Path
    meta: dict[str, Any]
    sha256: str
    """Over meta.json and the weights (names and bytes): ``load_model(expect_sha256=)`` checks it."""


def _require_token_format(path: Path, meta: dict[str, Any]) -> None:
    require_token_format(
        meta.get("token_format"),
        f"checkpoint {path}",
        "train again on a token store rebuilt with `matra-hpc data prepare ... --overwrite`",
        CheckpointError,
    )


def describe_checkpoint(path: str | Path) -> ResolvedCheckpoint:
    """Resolve ``path`` (see ``resolve_checkpoint``) and read its meta and hash from one read."""
    folder = resolve_checkpoint(path)
    meta_bytes, weights_bytes = _read_model_files(folder)
    try:
        meta = json.loads(meta_bytes)
    except ValueError as exc:
        raise CheckpointError(f"{folder / META_FILE} is unreadable: {exc}") from exc
    _require_token_format(folder, meta)
    return ResolvedCheckpoint(folder, meta, _files_sha256(meta_bytes, weights_bytes))


def load_model(
    checkpoint_path: str | Path, device: str | torch.device = "cpu", *, expect_sha256: str | None = None
) -> tuple[MatraTransformer, dict[str, Any]]:
    """Load a model written by the training stage; nothing is unpickled.

    ``checkpoint_path`` goes through ``resolve_checkpoint`` (a checkpoint directory, or a
    training output directory: its ``best/``, else its newest valid checkpoint). With
    ``expect_sha256`` (``describe_checkpoint(...).sha256``) the bytes loaded must hash to it, else
    CheckpointError: the files changed since they were recorded. Returns the model in eval
    mode and the metadata (model config, vocab_hash, token store path and hash, step, epoch).
    """
    from safetensors.torch import load as load_safetensors

    path = resolve_checkpoint(checkpoint_path)
    meta_bytes, weights_bytes = _read_model_files(path)
    if expect_sha256 is not None and _files_sha256(meta_bytes, weights_bytes) != expect_sha256:
        raise CheckpointError(
            f"checkpoint {path} changed since it was recorded (sha256 differs from {expect_sha256[:12]}); "
            "was it rewritten by a running training?"
        )
    try:
        meta = json.loads(meta_bytes)
        if isinstance(meta, dict) and meta.get("format") != CHECKPOINT_FORMAT:
            check_format(meta, path)  # raised below, not reported as unreadable
        config = ModelConfig.from_dict(meta["model_config"])
        state = load_safetensors(weights_bytes)
    except CheckpointError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(exc).__name__}: {exc})") from exc
    except Exception as exc:  # safetensors raises its own SafetensorError on a damaged header
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(exc).__name__}: {exc})") from exc
    _require_token_format(path, meta)
    model = MatraTransformer(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path} does not fit its own model config: {exc}") from exc
    model.to(device).eval()
    return model, meta
