"""Energy above the hull from ML energies, with references relaxed the same way as candidates.

- References (``--hull-reference``): a token store (``matra-hpc/tokens/1``: structures and their
  DFT ``e_above_hull``) or a folder of CIF / extxyz files (ids from file names). Used are the
  references whose DFT e-hull is at most ``max_ehull`` (unknown: used) and, for every reduced
  formula, its lowest one: the ML hull is built from what the reference's own DFT calls
  (near-)stable, which keeps the number of reference relaxations proportional to the hull, not
  to the reference set.
- Each reference in a candidate's chemical system is relaxed with the candidates' protocol and
  potentials once; its energy is cached in ``<cache>/<protocol key>/<writer>.jsonl`` (``<cache>``:
  ``--reference-cache``, default ``<store>/references``; the key covers protocol, weights and
  reference set, so screenings of several stores share relaxed references safely)
  (append-only, one file per writer, so ranks and array tasks never share a file).
- An element with no elemental reference in the set gets, in this order: ASE's reference
  crystal (``ase.build.bulk``, relaxed the same way, id ``ase:<El>``); for the diatomic gases
  (H, N, O, F, Cl, Br, I) the molecule at its experimental bond length in a 15 A box, energy
  from one evaluation (``molecule:<El>``: a cell relaxation would collapse the box); else, the
  lowest of fcc, bcc and simple cubic cells relaxed the same way (``approx:<El>:<lattice>``, an
  upper bound on the element's energy; such rows say ``approx:<El>`` in ``e_hull_method``).
- The MP2020 compatibility scheme (pymatgen ``MaterialsProject2020Compatibility``) corrects the
  ML entries of references and candidates alike (as matbench-discovery does): the potentials
  were trained on uncorrected MP energies. An ML entry has no DFT run, so its parameters say
  GGA+U exactly where MP would have used U (the U values MP2020 expects), else GGA.
- One ``PhaseDiagram`` per chemical system (cached); e_hull may be negative (below the hull).
"""

from __future__ import annotations

import json
import logging
import math
import os
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from matra_hpc.errors import UsageError

log = logging.getLogger(__name__)

CORRECTION_SCHEME = ("MP2020 (pymatgen MaterialsProject2020Compatibility) applied to the ML entries of "
                     "candidates and references alike")


@dataclass
class Reference:
    id: str
    structure: object
    dft_e_hull: float = float("nan")
    kind: str = "reference"
    """``reference`` (from the set), ``ase`` (ASE bulk), ``molecule`` (evaluated, not relaxed),
    ``approx`` (a simple lattice, relaxed)."""

    @property
    def elements(self) -> frozenset[str]:
        return frozenset(el.symbol for el in self.structure.composition.elements)


def load_references(source: str | Path, max_ehull: float | None = 0.001) -> list[Reference]:
    """References from a token store or a CIF/extxyz folder, filtered by their DFT e-hull."""
    path = Path(source)
    if not path.exists():
        raise UsageError(f"--hull-reference {path} does not exist")
    refs: list[Reference] = []
    if (path / "zarr.json").is_file():
        from pymatgen.core import Lattice, Structure

        from matra_hpc.data.store import open_token_store

        root = open_token_store(path)
        ids, ehull = root["id"][...], np.asarray(root["e_above_hull"][...], dtype=float)
        formulas = root["formula"][...]
        lattice, frac = np.asarray(root["lattice"][...]), np.asarray(root["frac_coords"][...])
        numbers, offsets = np.asarray(root["numbers"][...]), np.asarray(root["site_offsets"][...])
        lowest = _lowest_per_formula(formulas, ehull)
        for r in range(len(ids)):
            if max_ehull is not None and math.isfinite(ehull[r]) and ehull[r] > max_ehull and r not in lowest:
                continue
            a, b = offsets[r], offsets[r + 1]
            refs.append(Reference(str(ids[r]), Structure(Lattice(lattice[r]), numbers[a:b].astype(int), frac[a:b]),
                                  float(ehull[r])))
    elif path.is_dir():
        from ase.io import read
        from pymatgen.io.ase import AseAtomsAdaptor

        found = []
        for f in sorted(path.iterdir()):
            if f.suffix.lower() not in (".cif", ".extxyz", ".xyz"):
                continue
            try:
                frames = read(f, index=":")
            except Exception as exc:
                raise UsageError(f"--hull-reference: cannot read {f}: {exc}") from None
            for k, atoms in enumerate(frames):
                rid = f.stem if len(frames) == 1 else f"{f.stem}:{k}"
                found.append(Reference(rid, AseAtomsAdaptor.get_structure(atoms),
                                       float(atoms.info.get("e_above_hull", float("nan")))))
        lowest = _lowest_per_formula([r.structure.composition.reduced_formula for r in found],
                                     np.array([r.dft_e_hull for r in found]))
        refs = [r for k, r in enumerate(found) if max_ehull is None or not math.isfinite(r.dft_e_hull)
                or r.dft_e_hull <= max_ehull or k in lowest]
    else:
        raise UsageError(f"--hull-reference {path}: expected a token store or a folder of CIF/extxyz files")
    return refs


def _lowest_per_formula(formulas, ehull: np.ndarray) -> set[int]:
    """Row of the lowest known DFT e-hull of each reduced formula: a reference set that lacks the
    true ground state (a subset of a database) still gives each composition its best polymorph."""
    best: dict[str, int] = {}
    for r, formula in enumerate(formulas):
        if not math.isfinite(ehull[r]):
            continue
        key = str(formula)
        if key not in best or ehull[r] < ehull[best[key]]:
            best[key] = r
    return set(best.values())


def reference_fingerprint(source: str | Path) -> str:
    path = Path(source)
    if (path / "zarr.json").is_file():
        from matra_hpc.data.store import open_token_store

        return str(open_token_store(path).attrs.get("content_hash"))
    import hashlib

    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.is_file():
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return "sha256:" + h.hexdigest()


def chemsys(structure) -> frozenset[str]:
    return frozenset(el.symbol for el in structure.composition.elements)


# ---------------------------------------------------------------- MP2020 on ML entries


_COMPAT = None


def _compat():
    global _COMPAT
    if _COMPAT is None:
        from pymatgen.entries.compatibility import MaterialsProject2020Compatibility

        _COMPAT = MaterialsProject2020Compatibility(check_potcar=False)
    return _COMPAT


def ml_entry(structure, energy_per_atom: float, entry_id: str):
    """A corrected ComputedStructureEntry of an ML energy, or None if MP2020 rejects it."""
    from pymatgen.entries.computed_entries import ComputedStructureEntry

    compat = _compat()
    comp = structure.composition
    most_electroneg = max(comp.elements, key=lambda el: el.X).symbol
    u_values = compat.u_settings.get(most_electroneg, {})
    hubbards = {el.symbol: float(u_values.get(el.symbol, 0.0)) for el in comp.elements}
    has_u = any(v != 0 for v in hubbards.values())
    entry = ComputedStructureEntry(
        structure, energy_per_atom * comp.num_atoms, entry_id=entry_id,
        parameters={"run_type": "GGA+U" if has_u else "GGA", "hubbards": hubbards if has_u else {},
                    "software": "ml"},
    )
    try:
        return compat.process_entry(entry, clean=True, on_error="ignore")
    except Exception:  # pymatgen raises on odd oxidation-state guesses; treat as rejected
        return None


# ---------------------------------------------------------------- cache


class ReferenceCache:
    """Relaxed reference energies of one protocol: append-only JSONL files, one per writer."""

    def __init__(self, folder: str | Path, writer: str) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / f"{writer}.jsonl"
        self.data: dict[str, dict] = {}
        self.reload()

    def reload(self) -> None:
        for f in sorted(self.folder.glob("*.jsonl")):
            with open(f) as fh:
                for line in fh:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a torn last line of a killed writer
                    if isinstance(rec, dict) and "id" in rec:
                        self.data[rec["id"]] = rec

    def __contains__(self, ref_id: str) -> bool:
        return ref_id in self.data

    def get(self, ref_id: str) -> dict | None:
        return self.data.get(ref_id)

    def add(self, records: list[dict]) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            for rec in records:
                os.write(fd, (json.dumps(rec, sort_keys=True) + "\n").encode())
                self.data[rec["id"]] = rec
            os.fsync(fd)
        finally:
            os.close(fd)


def protocol_key(protocol_label: str, weights: dict[str, str], reference: str | None = None) -> str:
    """Cache key: energies are shared only between the same protocol, weights and reference set."""
    import hashlib

    text = json.dumps({"protocol": protocol_label, "weights": weights, "reference": reference}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- hull


class HullCalculator:
    """e_hull of relaxed candidates against references relaxed with the same protocol."""

    def __init__(self, references: list[Reference], cache: ReferenceCache,
                 relax: Callable[[list], list], single_point: Callable[[object], float], method: str) -> None:
        """``relax(structures) -> list[RelaxResult]`` runs the candidates' protocol;
        ``single_point(structure)`` is the energy per atom of the protocol's last potential."""
        self.references = references
        self.cache = cache
        self.relax = relax
        self.single_point = single_point
        self.method = method
        self.approximate: set[str] = set()
        self.by_element_set: dict[frozenset[str], list[Reference]] = {}
        for ref in references:
            self.by_element_set.setdefault(ref.elements, []).append(ref)
        self._diagrams: dict[frozenset[str], object] = {}

    def refs_for(self, elements: frozenset[str]) -> list[Reference]:
        out = []
        for key, refs in self.by_element_set.items():
            if key <= elements:
                out.extend(refs)
        return out

    def _elemental_fallbacks(self, elements: frozenset[str]) -> list[Reference]:
        from ase.build import bulk

        extra = []
        for el in sorted(elements):
            if frozenset([el]) in self.by_element_set:
                continue
            refs = []
            try:
                refs = [Reference(f"ase:{el}", _structure_of(bulk(el)), kind="ase")]
            except Exception:  # ASE has no simple reference crystal for this element
                molecule = DIATOMIC.get(el)
                if molecule is not None:
                    refs = [Reference(f"molecule:{el}", _molecule_in_box(molecule), kind="molecule")]
                else:
                    refs = [Reference(f"approx:{el}:{lat}", _structure_of(_simple_lattice(el, lat)), kind="approx")
                            for lat in ("fcc", "bcc", "sc")]
                    self.approximate.add(el)
            self.by_element_set[frozenset([el])] = refs
            extra.extend(refs)
        return extra

    def prepare(self, systems: Iterable[frozenset[str]], share: tuple[int, int] = (0, 1)) -> int:
        """Relax (and cache) every reference the given chemical systems need; returns how many.

        ``share=(k, n)``: relax only every n-th missing reference starting at k (MPI ranks split
        the work; the others are read from the cache afterwards with :meth:`reload`).
        """
        needed: dict[str, Reference] = {}
        for elements in systems:
            self._elemental_fallbacks(elements)
            for ref in self.refs_for(elements):
                needed[ref.id] = ref
        missing = [r for rid, r in sorted(needed.items()) if rid not in self.cache]
        mine = missing[share[0]::share[1]]
        molecules = [r for r in mine if r.kind == "molecule"]
        mine = [r for r in mine if r.kind != "molecule"]
        records = []
        for ref in molecules:
            energy = self.single_point(ref.structure)
            records.append({"id": ref.id, "energy_per_atom": energy if math.isfinite(energy) else None,
                            "reason": "" if math.isfinite(energy) else "relax_nan", "n_steps": 0,
                            "structure": ref.structure.as_dict()})
        if mine:
            log.info("relaxing %d hull references (%d needed, %d cached)", len(mine), len(needed),
                     len(needed) - len(missing))
            primitive = [r.structure.get_primitive_structure() for r in mine]
            results = self.relax(primitive)
            for ref, res in zip(mine, results, strict=True):
                # an unconverged reference still has a meaningful (upper-bound) energy
                usable = res.reason in ("", "relax_unconverged") and math.isfinite(res.energy_per_atom)
                records.append({"id": ref.id, "energy_per_atom": res.energy_per_atom if usable else None,
                                "reason": res.reason, "n_steps": res.n_steps,
                                "structure": res.structure.as_dict() if (usable and res.structure) else None})
        if records:
            self.cache.add(records)
        self._diagrams.clear()
        return len(mine)

    def reload(self) -> None:
        self.cache.reload()
        self._diagrams.clear()

    def _diagram(self, elements: frozenset[str]):
        if elements in self._diagrams:
            return self._diagrams[elements]
        from pymatgen.analysis.phase_diagram import PhaseDiagram
        from pymatgen.core import Structure

        entries = []
        for ref in self.refs_for(elements):
            rec = self.cache.get(ref.id)
            if rec is None or rec.get("energy_per_atom") is None:
                continue
            structure = Structure.from_dict(rec["structure"]) if rec.get("structure") else ref.structure
            entry = ml_entry(structure, float(rec["energy_per_atom"]), ref.id)
            if entry is not None:
                entries.append(entry)
        have = {el.symbol for e in entries if len(e.composition.elements) == 1 for el in e.composition.elements}
        diagram = None
        if have >= set(elements):
            diagram = PhaseDiagram(entries)
        self._diagrams[elements] = diagram
        return diagram

    def e_hull(self, structure, energy_per_atom: float, entry_id: str = "candidate") -> tuple[float, str]:
        """(e_hull in eV/atom, reason): reason ``no_reference`` when the hull cannot be built."""
        elements = chemsys(structure)
        diagram = self._diagram(elements)
        if diagram is None:
            return float("nan"), "no_reference"
        entry = ml_entry(structure, energy_per_atom, entry_id)
        if entry is None:
            return float("nan"), "no_reference"
        _decomp, e_above = diagram.get_decomp_and_e_above_hull(entry, allow_negative=True)
        return float(e_above), ""

    def method_for(self, structure) -> str:
        approx = sorted(chemsys(structure) & self.approximate)
        return self.method + (f"|approx:{','.join(approx)}" if approx else "")


DIATOMIC = {"H": ("H2", 0.74), "N": ("N2", 1.10), "O": ("O2", 1.21), "F": ("F2", 1.42), "Cl": ("Cl2", 1.99),
            "Br": ("Br2", 2.28), "I": ("I2", 2.67)}
"""Diatomic elemental gases and their experimental bond lengths (A)."""


def _structure_of(atoms):
    from pymatgen.io.ase import AseAtomsAdaptor

    return AseAtomsAdaptor.get_structure(atoms)


def _molecule_in_box(spec: tuple[str, float], box: float = 15.0):
    from pymatgen.core import Lattice, Structure

    formula, bond = spec
    el = formula.rstrip("0123456789")
    return Structure(Lattice.cubic(box), [el, el], [[0, 0, 0], [bond / box, 0, 0]], coords_are_cartesian=False)


def _simple_lattice(el: str, lattice: str):
    """fcc, bcc or simple cubic cell of an element, nearest neighbours at twice its covalent radius."""
    from ase.build import bulk
    from ase.data import atomic_numbers, covalent_radii

    d = 2 * covalent_radii[atomic_numbers[el]]
    a = {"fcc": d * 2 ** 0.5, "bcc": 2 * d / 3 ** 0.5, "sc": d}[lattice]
    return bulk(el, lattice, a=a)


def new_writer_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
