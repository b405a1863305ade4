"""Readers for the structure files users actually have.

A source is named on the command line as ``KIND[:NAME]=PATH`` (or just ``flla``):

- ``mp=DIR|FILE``: the Materials Project ``ComputedStructureEntry`` dump published with
  matbench-discovery (``*mp-computed-structure-entries*.json[.gz|.bz2]``: a pandas column table,
  a JSON array, or JSON lines) and, when found beside it, its summary table
  ``*mp-energies*.csv[.gz]`` (``energy_above_hull``, ``formation_energy_per_atom``).
- ``alexandria=DIR|FILE...``: Alexandria PBE ``alexandria_*.json[.bz2]`` files, each
  ``{"entries": [ComputedStructureEntry dicts]}`` with ``data.mat_id``, ``data.e_above_hull``,
  ``data.e_form``.
- ``wbm=DIR``: matbench-discovery WBM ``*wbm-computed-structure-entries*.jsonl.gz`` (relaxed;
  the initial structures ``*wbm-init-structs*`` are used when the relaxed file is absent) and
  ``*wbm-summary*.csv[.gz]`` (MP2020-corrected hull distance and formation energy).
- ``folder=DIR``: CIF, POSCAR/CONTCAR/``*.vasp`` and (ext)xyz files, with an optional
  ``properties.csv`` (columns ``id``, ``e_above_hull``, ``e_form``; ``id`` is the file stem or,
  for xyz frames, ``<stem>-<frame>`` unless the frame's comment line has ``material_id=``).
- ``flla``: the vendored demo set (3,938 Materials Project structures); its rows get the
  source name ``mp`` so their ids (``mp:mp-10``) join with other MP data.

Reading is split in two so that parallel runs stay cheap: ``iter_work_items`` walks the files
in a fixed order and yields small undecoded ``WorkItem``s (a rank skips the ones it does not
own without decoding them); ``load_item`` turns one item into a ``LoadedItem`` with a pymatgen
``Structure`` or a rejection reason. Nothing here raises for a bad record: it is counted.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import math
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matra_hpc.data.jsonstream import RawRecord, decode_record, iter_raw_records, iter_side_members, open_text
from matra_hpc.errors import UsageError
from matra_hpc.tokens.structure_io import ParseFailure, cif_blocks, read_cif_block, structure_problem

log = logging.getLogger(__name__)

KINDS = ("mp", "alexandria", "wbm", "folder", "flla")
DEFAULT_NAMES = {"mp": "mp", "alexandria": "alex", "wbm": "wbm", "flla": "mp"}

# Per kind: published energy provenance (contract section 4).
ENERGY_PROVENANCE: dict[str, dict[str, str]] = {
    "mp": {
        "functional": "PBE (GGA) / PBE+U (GGA+U) mixing",
        "correction_scheme": "MaterialsProject2020Compatibility",
        "hull_reference": "Materials Project convex hull (matbench-discovery snapshot 2023-02-07)",
    },
    "flla": {
        "functional": "PBE (GGA) / PBE+U (GGA+U) mixing",
        "correction_scheme": "MaterialsProjectCompatibility (legacy, 2015)",
        "hull_reference": "Materials Project convex hull as of 2015 (flla_2015, matminer 0.3.9)",
    },
    "alexandria": {
        "functional": "PBE / PBE+U (MP-compatible U values)",
        "correction_scheme": "MaterialsProject2020Compatibility",
        "hull_reference": "Alexandria PBE convex hull of the downloaded release",
    },
    "wbm": {
        "functional": "PBE / PBE+U (MP-compatible)",
        "correction_scheme": "MaterialsProject2020Compatibility",
        "hull_reference": "Materials Project PatchedPhaseDiagram (matbench-discovery, MP 2023-02-07)",
    },
    "folder": {
        "functional": "unknown (user files)",
        "correction_scheme": "unknown (user files)",
        "hull_reference": "as given in properties.csv",
    },
}

_STRUCTURE_SUFFIXES = (".cif", ".vasp", ".poscar")
_XYZ_SUFFIXES = (".xyz", ".extxyz")


@dataclass(frozen=True)
class SourceSpec:
    kind: str
    name: str
    """Prefix of the row ids: ``<name>:<material_id>``."""
    paths: tuple[str, ...]
    """Structure files in reading order (a folder source: the folder)."""
    summary: str | None = None
    """Properties table (CSV) joined on material id."""

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "paths": list(self.paths), "summary": self.summary}


def parse_source(text: str) -> SourceSpec:
    """Resolve ``KIND[:NAME]=PATH[,PATH...]`` (or ``flla``) into the files to read."""
    if text in ("flla", "demo"):
        from matra_hpc.data.demo import flla_path

        return SourceSpec("flla", DEFAULT_NAMES["flla"], (str(flla_path()),))
    if "=" not in text:
        raise UsageError(f"source {text!r}: expected KIND=PATH with KIND one of {', '.join(KINDS)}, or 'flla'")
    head, _, tail = text.partition("=")
    kind, _, name = head.partition(":")
    if kind not in KINDS:
        raise UsageError(f"source {text!r}: unknown kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    paths = [Path(p) for p in tail.split(",") if p]
    for p in paths:
        if not p.exists():
            raise UsageError(f"source {text!r}: {p} does not exist")
    if kind == "folder":
        if len(paths) != 1 or not paths[0].is_dir():
            raise UsageError(f"source {text!r}: folder= takes one directory")
        props = [p for p in (paths[0] / "properties.csv", paths[0] / "properties.csv.gz") if p.exists()]
        return SourceSpec(kind, name or paths[0].name, (str(paths[0]),), str(props[0]) if props else None)
    name = name or DEFAULT_NAMES[kind]
    files, summary = _discover(kind, paths)
    if not files:
        raise UsageError(f"source {text!r}: no {kind} structure files found under {tail}")
    return SourceSpec(kind, name, tuple(str(f) for f in files), str(summary) if summary else None)


def _discover(kind: str, paths: list[Path]) -> tuple[list[Path], Path | None]:
    patterns = {
        "mp": (["*mp-computed-structure-entries*.json*"], ["*mp-energies*.csv*"]),
        "alexandria": (["alexandria_*.json*"], []),
        "wbm": (["*wbm-computed-structure-entries*.json*", "*wbm-init-structs*.json*"], ["*wbm-summary*.csv*"]),
    }[kind]
    files: list[Path] = []
    summary: Path | None = None
    for p in paths:
        if p.is_file():
            if p.name.endswith((".csv", ".csv.gz", ".csv.bz2")):
                summary = p
            else:
                files.append(p)
            continue
        for pattern in patterns[0]:
            found = sorted(f for f in p.glob(pattern) if not f.name.endswith(".part"))
            if found:
                # WBM: relaxed structures win over initial ones; never read both.
                files.extend(found if kind == "alexandria" else found[:1])
                break
        for pattern in patterns[1]:
            found = sorted(f for f in p.glob(pattern) if not f.name.endswith(".part"))
            if found:
                summary = found[-1]
    return files, summary


@dataclass
class WorkItem:
    """One undecoded input record: small and picklable, decoded only by the rank that owns it."""

    source: str
    kind: str
    file: str
    index: int
    """Position of the record in its file."""
    payload: str
    """Raw JSON text, an xyz frame, or a file path (folder CIF/POSCAR)."""
    material_id: str | None = None
    truncated: bool = False


@dataclass
class LoadedItem:
    id: str
    structure: Any = None
    """pymatgen Structure, or None when rejected."""
    e_above_hull: float = math.nan
    e_form: float = math.nan
    reason: str | None = None
    detail: str = ""
    extras: dict[str, Any] = field(default_factory=dict)


def iter_work_items(spec: SourceSpec) -> Iterator[WorkItem]:
    """Every input record of a source in a fixed order (files sorted, records in file order)."""
    for unit in range(len(read_units(spec))):
        yield from iter_unit_items(spec, unit)


def read_units(spec: SourceSpec) -> list[str]:
    """The separately readable files of a source (a folder is one unit)."""
    return list(spec.paths)


def iter_unit_items(spec: SourceSpec, unit: int) -> Iterator[WorkItem]:
    """The records of one file of a source, in file order."""
    if spec.kind == "folder":
        yield from _iter_folder(spec)
        return
    if spec.kind == "flla":
        yield from iter_flla_items(spec)
        return
    path = spec.paths[unit]
    side: dict[str, Any] = {}
    if spec.kind in ("mp", "wbm") and ".jsonl" not in Path(path).name:
        # pandas column tables keep the ids in a separate small column before the entries.
        try:
            side = iter_side_members(path, ("material_id",))
        except (ValueError, EOFError, OSError):
            side = {}  # the records pass below reports the damage
    ids = side.get("material_id") if isinstance(side.get("material_id"), dict) else None
    n = 0
    try:
        for raw in iter_raw_records(path):
            yield _item_from_raw(spec, path, raw, ids)
            n += 1
    except (ValueError, EOFError, OSError):
        # Not JSON, or a compressed stream cut short (an interrupted copy): one parse_error
        # item stands for the unreadable rest of the file, and the next file is read.
        yield WorkItem(spec.name, spec.kind, path, n, "", material_id=f"{Path(path).name}#unreadable-after-{n}",
                       truncated=True)


def _item_from_raw(spec: SourceSpec, path: str, raw: RawRecord, ids: dict | None) -> WorkItem:
    material_id = None
    if ids is not None and raw.key is not None:
        material_id = ids.get(raw.key)
    elif raw.key is not None and not raw.key.isdigit():
        material_id = raw.key  # a column table indexed by material id instead of 0..n-1
    return WorkItem(spec.name, spec.kind, path, raw.index, raw.text, material_id, raw.truncated)


def _iter_folder(spec: SourceSpec) -> Iterator[WorkItem]:
    root = Path(spec.paths[0])
    files = sorted(p for p in root.rglob("*") if p.is_file())
    for path in files:
        name = path.name.lower()
        if name.startswith("properties.csv"):
            continue
        if name.endswith(_XYZ_SUFFIXES):
            for index, (frame, frame_id) in enumerate(_split_xyz_frames(path)):
                yield WorkItem(spec.name, "folder", str(path), index, frame,
                               material_id=frame_id or f"{path.stem}-{index}")
        elif name.endswith(".cif"):
            # every data_ block is a structure (the same reader as `tokens encode`)
            n_blocks = len(cif_blocks(path.read_text(errors="replace")))
            for index in range(n_blocks):
                yield WorkItem(spec.name, "folder", str(path), index, str(path),
                               material_id=path.stem if n_blocks == 1 else f"{path.stem}#{index}")
        elif name.endswith(_STRUCTURE_SUFFIXES) or name.startswith(("poscar", "contcar")):
            yield WorkItem(spec.name, "folder", str(path), 0, str(path), material_id=path.stem)


_XYZ_ID = re.compile(r"(?:^|\s)(?:material_id|mat_id|id)=(\"[^\"]*\"|\S+)")


def _split_xyz_frames(path: Path) -> Iterator[tuple[str, str | None]]:
    """Cut an (ext)xyz file into frames by their atom-count lines, without parsing them."""
    with open_text(path) as handle:
        lines = iter(handle)
        for first in lines:
            if not first.strip():
                continue
            try:
                n = int(first.split()[0])
            except ValueError:
                yield first, None  # garbage line: becomes one parse_error frame
                continue
            body = [first]
            for _ in range(n + 1):
                nxt = next(lines, None)
                if nxt is None:
                    break
                body.append(nxt)
            m = _XYZ_ID.search(body[1]) if len(body) > 1 else None
            yield "".join(body), (m.group(1).strip('"') if m else None)


# --------------------------------------------------------------------------------------------
# Decoding one item (runs in the worker that owns it)


@functools.lru_cache(maxsize=8)
def load_summary(path: str) -> dict[str, tuple[float, float]]:
    """material_id -> (e_above_hull, e_form) from a summary CSV; column names as published."""
    import pandas as pd

    try:
        df = pd.read_csv(path)
    except Exception as exc:
        raise UsageError(f"summary table {path} cannot be read ({_short(exc)}): fetch it again or leave it out") from None
    id_col = _pick(df.columns, ("material_id", "mat_id", "id"))
    if id_col is None:
        raise UsageError(f"summary table {path} has no material_id/mat_id/id column")
    hull_col = _pick(df.columns, ("e_above_hull_mp2020_corrected_ppd_mp", "energy_above_hull", "e_above_hull",
                                  "e_above_hull_mp", "e_above_hull_wbm", "e_hull_wbm"))
    form_col = _pick(df.columns, ("e_form_per_atom_mp2020_corrected", "formation_energy_per_atom", "e_form_per_atom",
                                  "e_form", "e_form_per_atom_wbm"))
    if hull_col is None:
        log.warning("%s has no e_above_hull column: its structures get no stability token", path)
    n = len(df)
    hulls = df[hull_col].to_numpy(dtype=float) if hull_col else [math.nan] * n
    forms = df[form_col].to_numpy(dtype=float) if form_col else [math.nan] * n
    return {str(i): (float(h), float(f)) for i, h, f in zip(df[id_col], hulls, forms, strict=True)}


def _pick(columns: Any, names: tuple[str, ...]) -> str | None:
    for name in names:
        if name in columns:
            return name
    return None


def load_item(item: WorkItem, summary: str | None = None) -> LoadedItem:
    """Decode one work item into a structure with its properties, or a rejection reason."""
    fallback_id = item.material_id or f"{Path(item.file).name}#{item.index}"
    try:
        if item.kind == "folder":
            loaded = _load_folder_item(item)
        elif item.kind == "flla":
            loaded = _load_flla(item)
        else:
            loaded = _load_entry(item)
    except _Rejected as exc:
        return LoadedItem(id=f"{item.source}:{exc.material_id or fallback_id}", reason=exc.reason, detail=exc.detail)
    except Exception as exc:  # any malformed record is a parse_error, never a crash
        return LoadedItem(id=f"{item.source}:{fallback_id}", reason="parse_error", detail=_short(exc))
    if summary is not None:
        props = load_summary(summary).get(loaded.id)
        if props is not None:
            loaded.e_above_hull, loaded.e_form = props
    loaded.id = f"{item.source}:{loaded.id}"
    reason = structure_problem(loaded.structure)
    if reason:
        loaded.reason, loaded.detail, loaded.structure = reason, reason.replace("_", " "), None
    return loaded


class _Rejected(Exception):
    def __init__(self, reason: str, detail: str, material_id: str | None = None) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.material_id = reason, detail, material_id


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) < 200 else text[:197] + "..."


def _finite_or_nan(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out


def _load_entry(item: WorkItem) -> LoadedItem:
    from pymatgen.core import Structure

    try:
        rec = decode_record(RawRecord(item.index, item.payload, truncated=item.truncated))
    except ValueError as exc:
        raise _Rejected("parse_error", _short(exc), item.material_id) from None
    if not isinstance(rec, dict):
        raise _Rejected("parse_error", f"record is a {type(rec).__name__}, not an object", item.material_id)
    entry = rec
    for key in ("computed_structure_entry", "entry", "cse"):
        if isinstance(rec.get(key), dict):
            entry = rec[key]
            break
    data = entry.get("data") if isinstance(entry.get("data"), dict) else {}
    material_id = (item.material_id or rec.get("material_id") or data.get("mat_id") or data.get("material_id")
                   or entry.get("entry_id"))
    if not material_id:
        raise _Rejected("parse_error", "record has no material id", None)
    material_id = str(material_id)
    struct_dict = entry.get("structure") or rec.get("initial_structure") or rec.get("structure")
    if struct_dict is None and "lattice" in entry and "sites" in entry:
        struct_dict = entry
    if not isinstance(struct_dict, dict):
        raise _Rejected("parse_error", "record has no structure", material_id)
    if _has_non_finite(struct_dict.get("lattice", {}).get("matrix")) or any(
        _has_non_finite(site.get("abc")) for site in struct_dict.get("sites", [])
    ):
        raise _Rejected("nan_or_inf", "non-finite lattice or coordinates", material_id)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = Structure.from_dict(struct_dict)
    except Exception as exc:
        raise _Rejected("parse_error", _short(exc), material_id) from None
    return LoadedItem(
        id=material_id,
        structure=structure,
        e_above_hull=_finite_or_nan(data.get("e_above_hull", math.nan)),
        e_form=_finite_or_nan(data.get("e_form", data.get("formation_energy_per_atom", math.nan))),
    )


def _has_non_finite(values: Any) -> bool:
    if values is None:
        return False
    if isinstance(values, (list, tuple)):
        return any(_has_non_finite(v) for v in values)
    try:
        return not math.isfinite(float(values))
    except (TypeError, ValueError):
        return True


def _load_flla(item: WorkItem) -> LoadedItem:
    from matra_hpc.data.demo import structure_from_record

    try:
        rec = json.loads(item.payload)
    except ValueError as exc:
        raise _Rejected("parse_error", _short(exc), item.material_id) from None
    material_id = str(rec.get("material_id") or item.material_id or "")
    if _has_non_finite(rec.get("lattice")) or _has_non_finite(rec.get("frac_coords")):
        raise _Rejected("nan_or_inf", "non-finite lattice or coordinates", material_id)
    structure = structure_from_record(rec)
    return LoadedItem(
        id=material_id,
        structure=structure,
        e_above_hull=_finite_or_nan(rec.get("e_above_hull")),
        e_form=_finite_or_nan(rec.get("formation_energy_per_atom")),
    )


def _load_folder_item(item: WorkItem) -> LoadedItem:
    from pymatgen.core import Structure

    material_id = item.material_id or Path(item.file).stem
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if item.file.lower().endswith(_XYZ_SUFFIXES):
            import ase.io
            from pymatgen.io.ase import AseAtomsAdaptor

            try:
                atoms = ase.io.read(io.StringIO(item.payload), format="extxyz")
            except Exception as exc:
                raise _Rejected("parse_error", _short(exc), material_id) from None
            if not all(atoms.pbc) or abs(atoms.cell.volume) < 1e-9:
                raise _Rejected("not_periodic", "frame is not periodic in 3D", material_id)
            import numpy as np

            if not (np.isfinite(atoms.positions).all() and np.isfinite(atoms.cell.array).all()):
                raise _Rejected("nan_or_inf", "non-finite lattice or coordinates", material_id)
            structure = AseAtomsAdaptor.get_structure(atoms)
        else:
            try:
                if item.file.lower().endswith(".cif"):
                    structure = read_cif_block(cif_blocks(Path(item.file).read_text(errors="replace"))[item.index])
                    if isinstance(structure, ParseFailure):
                        raise ValueError(structure.detail)
                else:
                    structure = Structure.from_file(item.file)
            except Exception as exc:
                raise _Rejected("parse_error", _short(exc), material_id) from None
    return LoadedItem(id=material_id, structure=structure)


def iter_flla_items(spec: SourceSpec) -> Iterator[WorkItem]:
    """Lines of the vendored demo file as work items."""
    with open_text(spec.paths[0]) as handle:
        for index, line in enumerate(handle):
            if line.strip():
                yield WorkItem(spec.name, "flla", spec.paths[0], index, line)
