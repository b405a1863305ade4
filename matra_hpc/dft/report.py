"""dft-report: a VASP tree's results -> DFT e-hull per candidate, counts, plots and stable structures.

Per candidate of the tree's manifest (its id unchanged since generation):

1. judge its outputs (:func:`matra_hpc.dft.outputs.assess`): converged, or failed with a reason
   (unconverged electronic/ionic, truncated or missing vasprun.xml, never ran, ...);
2. take the final run's ``ComputedStructureEntry`` and apply ``MaterialsProject2020Compatibility``
   (a run with other U values or POTCARs than MP's is ``incompatible``, not silently mixed);
3. compute its e-hull against the reference entries of its chemical system (missing elemental
   references: ``no_reference``).

Reference entries and the MP2020 correction, applied exactly once: an entry whose
``energy_adjustments`` already hold MP2020 corrections (MP's and Alexandria's MP-compatible
exports do) is used as it is; any other entry is processed with ``clean=True``, which first drops
whatever adjustments it carries and then applies MP2020, so a correction is never added on top
of another. Entries the scheme refuses are left out and counted in the report.

Writes ``TREE/dft-report.json`` (summary and one row per candidate), ``dft-report.csv``,
``dft-report.png`` (counts and the e-hull distribution), ``dft-parity.png`` (ML vs DFT e-hull),
and for candidates at or below the stable threshold ``dft-stable-cif.zip`` and
``dft-stable.extxyz``. Nothing here raises for one bad candidate: it becomes a reason.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import os
import warnings
import zipfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from itertools import combinations
from pathlib import Path
from typing import Any

from matra_hpc.dft.config import DftReportConfig
from matra_hpc.dft.layout import CANDIDATE_FILE, read_tree_manifest, safe_name
from matra_hpc.dft.outputs import assess
from matra_hpc.errors import UsageError

REPORT_SCHEMA = "matra-hpc/dft-report/1"
CSV_COLUMNS = ("id", "dir", "formula", "state", "reason", "e_hull_ml", "e_hull_dft", "energy_per_atom",
               "corrected_energy_per_atom", "correction_per_atom", "n_sites", "final_run", "message")
REPORT_REASONS = (
    "unconverged_electronic", "unconverged_ionic", "validation_failed", "not_run", "not_from_vasp_prep",
    "composition_mismatch", "incompatible", "no_reference", "parse_error",
)


def _is_mp2020_corrected(entry: Any) -> bool:
    return any(str(adj.name).startswith("MP2020") for adj in getattr(entry, "energy_adjustments", []))


def load_references(path: str | Path, correction: str = "auto") -> tuple[list[Any], dict[str, Any]]:
    """MP2020-corrected reference entries from a JSON (optionally gzipped) of ComputedStructureEntry.

    ``correction="none"`` takes every entry's energy as it is (the file vouches for MP2020).
    """
    from monty.json import MontyDecoder
    from pymatgen.entries.compatibility import CompatibilityError, MaterialsProject2020Compatibility

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"hull reference {path} does not exist")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt") as handle:
            raw = json.load(handle)
    except (OSError, json.JSONDecodeError, EOFError) as exc:
        raise UsageError(f"hull reference {path} is not a JSON of entries ({exc})") from None
    if isinstance(raw, dict) and "entries" in raw:
        raw = raw["entries"]
    if not isinstance(raw, list):
        raise UsageError(f"hull reference {path} must hold a list of ComputedStructureEntry")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        decoded = MontyDecoder().process_decoded(raw)
        compat = MaterialsProject2020Compatibility()
        kept, already, corrected, refused = [], 0, 0, 0
        for entry in decoded:
            if not hasattr(entry, "energy_per_atom") or not hasattr(entry, "composition"):
                raise UsageError(f"hull reference {path} holds something that is not an entry: {type(entry)}")
            if _is_mp2020_corrected(entry) or correction == "none":
                kept.append(entry)
                already += 1
                continue
            try:
                compat.process_entry(entry, clean=True, on_error="raise")
            except (CompatibilityError, ValueError, KeyError):
                refused += 1
                continue
            kept.append(entry)
            corrected += 1
    info = {"path": str(path.resolve()), "correction": correction, "entries": len(decoded), "used": len(kept),
            "already_mp2020": already,
            "corrected_here": corrected, "refused_by_mp2020": refused}
    return kept, info


def _candidate_row(job: dict[str, Any]) -> dict[str, Any]:
    """Judge one candidate directory (runs in a pool worker): its row without e-hull."""
    from pymatgen.entries.compatibility import CompatibilityError, MaterialsProject2020Compatibility

    entry_info = job["entry"]
    directory = Path(job["tree"]) / entry_info["dir"]
    row: dict[str, Any] = {
        "id": entry_info["id"], "dir": entry_info["dir"], "formula": entry_info.get("formula", ""),
        "state": "failed", "reason": "", "message": "", "e_hull_ml": entry_info.get("e_hull"),
        "e_hull_dft": None, "energy_per_atom": None, "corrected_energy_per_atom": None,
        "correction_per_atom": None, "n_sites": entry_info.get("n_sites"), "final_run": None,
    }
    record_path = directory / CANDIDATE_FILE
    try:
        record = json.loads(record_path.read_text())
    except (OSError, json.JSONDecodeError):
        record = None
    if not isinstance(record, dict) or record.get("id") != entry_info["id"]:
        return {**row, "reason": "not_from_vasp_prep",
                "message": f"{record_path} is missing or names another candidate"}
    verdict = assess(directory, static=job["static"], keep_vasprun=True)
    if verdict.final is not None:
        row["final_run"] = verdict.final.name
    if verdict.state == "missing":
        ran = any(directory.glob("custodian.json*")) or any(directory.glob("vasp.out*"))
        if ran:  # VASP was started and left no vasprun.xml at all
            return {**row, "reason": "validation_failed", "message": verdict.message}
        return {**row, "reason": "not_run", "message": "no output: never run (submit vasp)"}
    if verdict.state != "converged":
        return {**row, "reason": verdict.reason, "message": verdict.message}
    vrun = verdict.vasprun
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            entry = vrun.get_computed_entry(inc_structure=True, entry_id=entry_info["id"])
    except Exception as exc:
        return {**row, "reason": "parse_error", "message": f"{type(exc).__name__}: {exc}"}
    structure = entry.structure
    row["energy_per_atom"] = entry.uncorrected_energy_per_atom
    if structure.composition.reduced_formula != record.get("formula"):
        return {**row, "reason": "composition_mismatch",
                "message": f"final run is {structure.composition.reduced_formula}, "
                           f"the candidate is {record.get('formula')}"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            MaterialsProject2020Compatibility().process_entry(entry, clean=True, on_error="raise")
    except (CompatibilityError, ValueError, KeyError) as exc:
        return {**row, "reason": "incompatible", "message": f"MP2020: {exc}"}
    row.update(state="converged", corrected_energy_per_atom=entry.energy_per_atom,
               correction_per_atom=entry.correction_per_atom, entry=entry.as_dict())
    return row


def _hulls(rows: list[dict[str, Any]], references: list[Any]) -> None:
    """Fill e_hull_dft of converged rows, chemical system by chemical system."""
    from pymatgen.analysis.phase_diagram import PhaseDiagram
    from pymatgen.entries.computed_entries import ComputedStructureEntry

    by_system: dict[frozenset[str], list[dict[str, Any]]] = {}
    for row in rows:
        if row["state"] == "converged":
            entry = ComputedStructureEntry.from_dict(row["entry"])
            row["_entry"] = entry
            by_system.setdefault(frozenset(el.symbol for el in entry.composition.elements), []).append(row)
    by_refsystem: dict[frozenset[str], list[Any]] = {}
    for ref in references:
        by_refsystem.setdefault(frozenset(el.symbol for el in ref.composition.elements), []).append(ref)
    elemental = {next(iter(system)) for system in by_refsystem if len(system) == 1}
    for system, members in by_system.items():
        missing = sorted(system - elemental)
        if missing:
            for row in members:
                row.update(state="failed", reason="no_reference",
                           message=f"no reference entry for element(s) {', '.join(missing)}")
            continue
        # the references of every sub-system (at most 2^8 for 8 elements), not a scan of all of them
        elements = sorted(system)
        subset = [ref for size in range(1, len(elements) + 1) for combo in combinations(elements, size)
                  for ref in by_refsystem.get(frozenset(combo), ())]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            diagram = PhaseDiagram(subset)
            for row in members:
                _decomp, e_hull = diagram.get_decomp_and_e_above_hull(row["_entry"], allow_negative=True)
                row["e_hull_dft"] = float(e_hull)


def _counts(rows: list[dict[str, Any]], thresholds: tuple[float, ...]) -> dict[str, Any]:
    hulls = [r["e_hull_dft"] for r in rows if r["e_hull_dft"] is not None]
    return {
        "candidates": len(rows),
        "converged": sum(r["state"] == "converged" for r in rows),
        "with_e_hull": len(hulls),
        "failed": sum(r["state"] != "converged" for r in rows),
        "failed_by_reason": dict(sorted(Counter(r["reason"] for r in rows if r["state"] != "converged").items())),
        "below": {f"{t:.3f}": sum(h <= t for h in hulls) for t in thresholds},
    }


def _plots(tree: Path, rows: list[dict[str, Any]], counts: dict[str, Any], thresholds: tuple[float, ...]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hulls = [r["e_hull_dft"] for r in rows if r["e_hull_dft"] is not None]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    labels = ["candidates", "converged"] + [f"<= {t:.3f}" for t in thresholds]
    values = [counts["candidates"], counts["converged"]] + [counts["below"][f"{t:.3f}"] for t in thresholds]
    ax1.bar(labels, values, color="tab:blue")
    for i, v in enumerate(values):
        ax1.text(i, v, str(v), ha="center", va="bottom")
    ax1.set_title("DFT outcome (e-hull in eV/atom)")
    ax1.tick_params(axis="x", rotation=30)
    if hulls:
        ax2.hist(hulls, bins=max(5, min(60, len(hulls))), color="tab:green")
        for t in thresholds:
            ax2.axvline(t, color="grey", linestyle="--", linewidth=0.8)
    ax2.set_xlabel("DFT e-hull (eV/atom)")
    ax2.set_ylabel("candidates")
    ax2.set_title("distribution")
    fig.tight_layout()
    _save(fig, tree / "dft-report.png")
    plt.close(fig)

    pairs = [(r["e_hull_ml"], r["e_hull_dft"]) for r in rows
             if r["e_hull_dft"] is not None and r["e_hull_ml"] is not None and math.isfinite(r["e_hull_ml"])]
    fig, ax = plt.subplots(figsize=(5, 5))
    if pairs:
        xs, ys = zip(*pairs, strict=True)
        ax.scatter(xs, ys, s=8)
        low, high = min(min(xs), min(ys)), max(max(xs), max(ys))
        ax.plot([low, high], [low, high], color="grey", linewidth=0.8)
    ax.set_xlabel("estimated e-hull, ML screening (eV/atom)")
    ax.set_ylabel("DFT e-hull (eV/atom)")
    ax.set_title(f"parity ({len(pairs)} candidates)")
    fig.tight_layout()
    _save(fig, tree / "dft-parity.png")
    plt.close(fig)


def _save(fig: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.partial.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text)
    os.replace(tmp, path)


def _stable_outputs(tree: Path, rows: list[dict[str, Any]], threshold: float) -> int:
    """CIFs in a zip and one extxyz of the candidates at or below the threshold."""
    from ase.io import write as ase_write
    from pymatgen.io.ase import AseAtomsAdaptor
    from pymatgen.io.cif import CifWriter

    stable = [r for r in rows if r["e_hull_dft"] is not None and r["e_hull_dft"] <= threshold]
    stable.sort(key=lambda r: (r["e_hull_dft"], r["id"]))
    zip_tmp = tree / ".dft-stable-cif.zip.partial"
    frames = []
    with zipfile.ZipFile(zip_tmp, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        for row in stable:
            structure = row["_entry"].structure
            bundle.writestr(f"{safe_name(row['id'])}.cif", str(CifWriter(structure)))
            atoms = AseAtomsAdaptor.get_atoms(structure)
            atoms.info = {"id": row["id"], "e_hull_dft": row["e_hull_dft"],
                          "corrected_energy_per_atom": row["corrected_energy_per_atom"]}
            frames.append(atoms)
    os.replace(zip_tmp, tree / "dft-stable-cif.zip")
    buffer = io.StringIO()
    if frames:
        ase_write(buffer, frames, format="extxyz")
    _write_text(tree / "dft-stable.extxyz", buffer.getvalue())
    return len(stable)


def unknown_directories(tree: Path, manifest: dict[str, Any]) -> list[str]:
    """Folders in the tree's blocks that no manifest entry names (not written by vasp-prep)."""
    known = {c["dir"] for c in manifest["candidates"]}
    out = []
    for block in sorted(p for p in tree.iterdir() if p.is_dir() and p.name.startswith("b")):
        for child in sorted(block.iterdir()):
            rel = f"{block.name}/{child.name}"
            if child.is_dir() and not child.name.startswith(".") and rel not in known:
                out.append(rel)
    return out


def build_report(config: DftReportConfig) -> dict[str, Any]:
    """Judge every candidate of the tree, compute e-hulls, write the report files; returns the summary."""
    config.validate()
    tree = Path(config.tree)
    manifest = read_tree_manifest(tree)
    references, ref_info = (load_references(config.hull_reference, config.reference_correction)
                            if config.hull_reference else ([], None))
    jobs = [{"tree": str(tree), "entry": entry, "static": config.static} for entry in manifest["candidates"]]
    if config.workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(config.workers) as pool:
            rows = list(pool.map(_candidate_row, jobs, chunksize=16))
    else:
        rows = [_candidate_row(job) for job in jobs]
    if references:
        _hulls(rows, references)
    else:
        for row in rows:
            if row["state"] == "converged":
                row.update(state="failed", reason="no_reference", message="no --hull-reference given")
    counts = _counts(rows, config.thresholds)
    _plots(tree, rows, counts, config.thresholds)
    n_stable = _stable_outputs(tree, rows, config.stable_threshold)
    public = [{k: v for k, v in r.items() if k in CSV_COLUMNS} for r in rows]
    summary = {
        "schema": REPORT_SCHEMA,
        "tree": str(tree.resolve()),
        "source": manifest["source"],
        "config": {"hull_reference": config.hull_reference, "reference_correction": config.reference_correction,
                   "static": config.static, "thresholds": list(config.thresholds),
                   "stable_threshold": config.stable_threshold},
        "energy": {"functional": "PBE (+U as MP)", "correction_scheme": "MP2020 (MaterialsProject2020Compatibility)",
                   "references": ref_info},
        "counts": counts,
        "stable": n_stable,
        "unknown_directories": unknown_directories(tree, manifest),
    }
    _write_text(tree / "dft-report.json", json.dumps({**summary, "rows": public}, indent=1, default=str) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in public:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in CSV_COLUMNS})
    _write_text(tree / "dft-report.csv", buffer.getvalue())
    return summary
