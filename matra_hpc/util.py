"""Small helpers every layer shares: durable JSON writes, file hashes, the code's revision.

This module sits at the bottom of the package (it imports nothing from matra_hpc), so a
library, a stage or the launch layer can use it without pointing an import upwards. Each
helper exists once; a new stage calls these rather than writing its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
"""The checkout the package runs from (``jobs/``, ``templates/`` and the demo data live here)."""


TEMPLATE_DIR = REPO_ROOT / "templates"


def render_template(name: str, **values: Any) -> str:
    """Render ``templates/<name>`` (Jinja2, undefined names are errors, ``|quote`` shell-quotes).

    Pure: the same values give the same text, so job scripts are golden-file tested.
    Raises FileNotFoundError naming the folder when there is no such template.
    """
    import shlex

    import jinja2

    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
                                     undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    environment.filters["quote"] = lambda value: shlex.quote(str(value))
    try:
        template = environment.get_template(name)
    except jinja2.TemplateNotFound:
        raise FileNotFoundError(f"no template {name} under {TEMPLATE_DIR}") from None
    return template.render(**values)


def absolute_path(path: str | os.PathLike[str]) -> str:
    """``~`` expanded, made absolute: configs hold these, as a job may start in another directory."""
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


def dataclass_defaults(cls: type) -> dict[str, Any]:
    """Field name -> default of a config dataclass (fields without one are left out).

    The CLI takes its ``--help`` defaults from here, so a default is written once, in the config.
    """
    import dataclasses

    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def fsync_dir(path: Path | str) -> None:
    """Make a rename inside ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _json_default(obj: Any) -> Any:
    # numpy scalars come out of stores and reports; Paths out of configs
    if isinstance(obj, Path):
        return str(obj)
    numpy = sys.modules.get("numpy")  # a numpy scalar implies numpy is loaded; never import it here
    if numpy is not None:
        if isinstance(obj, numpy.integer):
            return int(obj)
        if isinstance(obj, numpy.floating):
            return float(obj)
        if isinstance(obj, numpy.bool_):
            return bool(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json_atomic(path: Path | str, data: Any, *, indent: int | None = 2, sort_keys: bool = False) -> None:
    """Write ``data`` as strict JSON beside ``path``, fsync it, rename it over ``path``.

    A reader sees the old file or the new one, never half of one, and after a crash (node
    lost, kill -9) the new one is on disk once this returned. NaN and infinity are refused:
    other tools must be able to read every file we write.
    """
    path = Path(path)
    # unique per process and thread: two ranks may write the same file name at once
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial")
    try:
        with open(tmp, "w") as handle:
            json.dump(data, handle, indent=indent, sort_keys=sort_keys, allow_nan=False, default=_json_default)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def file_sha256(path: Path | str) -> str:
    """sha256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def git_revision(root: Path | str = REPO_ROOT) -> str | None:
    """The commit of the code that runs, ``-dirty`` when tracked files changed; None without git."""
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        if rev.returncode != 0 or not rev.stdout.strip():
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


HOLD_VARIABLE = "MATRA_HPC_HOLD"
_hold_counts: dict[str, int] = {}


def hold_point(name: str) -> None:
    """A named point where a test may stop this process, to kill -9 it at a known moment.

    With ``MATRA_HPC_HOLD=NAME:N:FILE`` in the environment, the Nth call of
    ``hold_point(NAME)`` in this process creates FILE and then blocks for good, so the test
    waits for FILE and kills a process whose progress it knows exactly, instead of racing the
    clock. Without the variable (every real run) this is one dictionary lookup.
    """
    spec = os.environ.get(HOLD_VARIABLE)
    if not spec:
        return
    hold_name, count, path = spec.split(":", 2)
    if hold_name != name:
        return
    _hold_counts[name] = _hold_counts.get(name, 0) + 1
    if _hold_counts[name] != int(count):
        return
    Path(path).write_text(f"{os.getpid()}\n")
    while True:  # held until the test kills the process
        time.sleep(60)
