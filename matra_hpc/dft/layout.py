"""The VASP tree: candidate ids -> file-system-safe, sharded directories, and the tree's manifest.

::

    vasp/manifest.json            schema matra-hpc/vasp-tree/1: source store, config, candidates
    vasp/plan.json                the selection (written first; a rerun reuses it)
    vasp/b0000/<safe id>/         one candidate: INCAR, KPOINTS, POSCAR, POTCAR.spec (or POTCAR),
                                  candidate.json (id, source store and row, ML e-hull)
    vasp/b0001/...                at most ``block_size`` (1,000) candidates per block folder

Candidate ids contain ``:`` (``<run_id>:T0.70:s3:17``), which some file systems and tools
refuse; every byte outside ``[A-Za-z0-9._-]`` becomes ``%XX``, so the name is reversible and
two ids never share a directory. Blocks follow the selection's rank, so a candidate's path is a
function of the selection alone and any number of writers produce the same tree.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from matra_hpc import util
from matra_hpc.errors import UsageError

TREE_SCHEMA = "matra-hpc/vasp-tree/1"
MANIFEST = "manifest.json"
PLAN = "plan.json"
CANDIDATE_FILE = "candidate.json"
# Most file systems cap a name at 255 bytes; long ids keep a readable head plus a hash.
_MAX_NAME = 200
_SAFE = re.compile(r"[A-Za-z0-9._-]")


class TreeError(UsageError):
    """A directory that is not a VASP tree written by vasp-prep, or one written differently."""


def safe_name(candidate_id: str) -> str:
    """A file-system-safe, reversible directory name for a candidate id."""
    if not candidate_id:
        raise ValueError("empty candidate id")
    out = []
    for char in candidate_id:
        if _SAFE.fullmatch(char):
            out.append(char)
        else:
            out.extend(f"%{byte:02X}" for byte in char.encode())
    name = "".join(out)
    if name in (".", ".."):
        name = name.replace(".", "%2E")
    if len(name) > _MAX_NAME:
        digest = hashlib.sha256(candidate_id.encode()).hexdigest()[:16]
        name = f"{name[:_MAX_NAME - 17]}~{digest}"
    return name


def id_from_name(name: str) -> str:
    """Inverse of :func:`safe_name` for names that were not shortened."""
    if "~" in name:
        raise ValueError(f"{name} is a shortened name; read the id from its candidate.json")
    raw = bytearray()
    i = 0
    while i < len(name):
        if name[i] == "%":
            raw.append(int(name[i + 1:i + 3], 16))
            i += 3
        else:
            raw.extend(name[i].encode())
            i += 1
    return raw.decode()


def block_name(rank: int, block_size: int = 1000) -> str:
    return f"b{rank // block_size:04d}"


def candidate_relpath(candidate_id: str, rank: int, block_size: int = 1000) -> str:
    """Path of a candidate's directory inside the tree (posix, relative)."""
    return f"{block_name(rank, block_size)}/{safe_name(candidate_id)}"


def folder_layout(n_candidates: int, block_size: int = 1000) -> dict[str, int]:
    """How many block folders a tree of n candidates has and the most entries in one folder."""
    blocks = -(-n_candidates // block_size) if n_candidates else 0
    return {"candidates": n_candidates, "blocks": blocks,
            "max_entries_per_folder": max(blocks, min(block_size, n_candidates))}


def write_json_atomic(path: Path, data: Any) -> None:
    """The shared atomic JSON write, with the tree's fixed formatting (sorted keys: stable bytes)."""
    util.write_json_atomic(path, data, indent=1, sort_keys=True)


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise TreeError(f"{path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise TreeError(f"{path} is not valid JSON ({exc})") from None


def read_tree_manifest(tree: str | Path) -> dict[str, Any]:
    """The manifest of a finished VASP tree; TreeError when ``tree`` is not one."""
    path = Path(tree)
    if not path.is_dir():
        raise TreeError(f"{path} is not a directory")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        hint = " (vasp-prep did not finish: rerun it to resume)" if (path / PLAN).is_file() else ""
        raise TreeError(f"{path} is not a VASP tree written by vasp-prep (no {MANIFEST}){hint}")
    manifest = read_json(manifest_path)
    if not isinstance(manifest, dict) or manifest.get("schema") != TREE_SCHEMA:
        raise TreeError(f"{manifest_path} is not a VASP tree manifest (schema {TREE_SCHEMA})")
    return manifest


def is_tree(path: str | Path) -> bool:
    try:
        read_tree_manifest(path)
    except TreeError:
        return False
    return True
