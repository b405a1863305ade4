"""Relaxation with ML potentials: batched (torch-sim, in-flight refill) and per structure (ASE).

Both paths run FIRE with a Frechet cell filter (positions and cell together) and the same guards,
so a bad candidate ends as a status and a reason (contract J), never as a crashed shard:

- before: :func:`precheck` -> ``bad_geometry``, ``unsupported_element``, ``too_many_atoms``;
- every step: ``relax_nan`` (energy, forces or stress not finite), ``relax_exploded`` (a force
  above ``MAX_FORCE`` or positions/cell not finite), ``relax_volume`` (volume outside
  [1/3, 3] x the start); the structure stops there and its batch slot is refilled;
- after: ``relax_overlap`` (atoms closer than ``MIN_DISTANCE``), ``relax_unconverged``.

The batched path keeps one torch-sim state of many systems: one model call per FIRE step for
the whole batch; systems that finish leave and waiting ones take their place
(``InFlightAutoBatcher`` with an explicit ``max_memory_scaler``, here a number of atoms: its own
memory estimate needs CUDA). If the batched model raises, the unfinished structures fall back to
the per-structure path, where an exception is ``relax_error`` for that structure alone.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from matra_hpc.errors import UsageError

log = logging.getLogger(__name__)

MIN_DISTANCE = 0.5
"""A: closer atoms are overlapping (before relaxation: bad_geometry; after: relax_overlap)."""
VOLUME_PER_ATOM = (2.0, 200.0)
"""A^3 per atom accepted before relaxation: outside, a cell is collapsed or a gas."""
MAX_FORCE = 1e3
"""eV/A: a larger force means the potential left its domain (relax_exploded)."""
MAX_VOLUME_RATIO = 3.0
"""Volume may change by at most this factor either way during relaxation (relax_volume)."""


@dataclass(frozen=True)
class RelaxStep:
    """One step of a relaxation protocol: potential, force threshold (eV/A), step cap."""

    potential: str
    fmax: float
    max_steps: int

    def label(self) -> str:
        return f"{self.potential}:{self.fmax:g}"


def parse_protocol(spec: str, max_steps: int | Sequence[int] = 200) -> list[RelaxStep]:
    """``"sevennet:0.05,sevennet:0.02"`` -> steps; ``max_steps`` one cap for all or one per step.

    A step may carry its own cap as a third field: ``sevennet:0.05:100``.
    """
    from matra_hpc.screen.potentials import POTENTIALS

    parts = [p.strip() for p in (spec or "").split(",") if p.strip()]
    if not parts:
        raise UsageError("--relax is empty: give POTENTIAL:FMAX[,POTENTIAL:FMAX], e.g. sevennet:0.05,sevennet:0.02")
    caps = [int(max_steps)] * len(parts) if isinstance(max_steps, int) else [int(x) for x in max_steps]
    if len(caps) != len(parts):
        raise UsageError(f"--max-steps has {len(caps)} values for {len(parts)} relaxation steps")
    steps = []
    for part, cap in zip(parts, caps, strict=True):
        fields = part.split(":")
        if len(fields) not in (2, 3):
            raise UsageError(f"--relax step {part!r}: expected POTENTIAL:FMAX or POTENTIAL:FMAX:MAX_STEPS")
        name = fields[0].strip()
        if name not in POTENTIALS:
            raise UsageError(f"--relax step {part!r}: unknown potential {name!r}; known: {', '.join(POTENTIALS)}")
        try:
            fmax = float(fields[1])
            if len(fields) == 3:
                cap = int(fields[2])
        except ValueError:
            raise UsageError(f"--relax step {part!r}: FMAX must be a number and MAX_STEPS an integer") from None
        if not (fmax > 0 and math.isfinite(fmax)):
            raise UsageError(f"--relax step {part!r}: FMAX must be > 0")
        if cap < 0:
            raise UsageError(f"--relax step {part!r}: the step cap must be >= 0")
        steps.append(RelaxStep(name, fmax, cap))
    return steps


def protocol_label(steps: Sequence[RelaxStep]) -> str:
    return ",".join(s.label() for s in steps)


@dataclass
class RelaxResult:
    """What one structure's relaxation produced (``reason`` from contract J's closed list)."""

    structure: object | None
    """Final pymatgen Structure when its geometry is finite, else None."""
    energy_per_atom: float = float("nan")
    max_force: float = float("nan")
    n_steps: int = 0
    converged: bool = False
    reason: str = ""
    volume_change: float = float("nan")
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.reason == ""


# ---------------------------------------------------------------- guards


def precheck(structure, potential=None, max_atoms: int | None = None) -> str:
    """The reason a structure must not be relaxed (``""``: relax it)."""
    lattice = np.asarray(structure.lattice.matrix, dtype=float)
    frac = np.asarray(structure.frac_coords, dtype=float)
    if not (np.all(np.isfinite(lattice)) and np.all(np.isfinite(frac))) or len(structure) == 0:
        return "bad_geometry"
    volume = float(abs(np.linalg.det(lattice)))
    if not volume > 1e-6:
        return "bad_geometry"
    per_atom = volume / len(structure)
    if not (VOLUME_PER_ATOM[0] <= per_atom <= VOLUME_PER_ATOM[1]):
        return "bad_geometry"
    if min_distance(structure) < MIN_DISTANCE:
        return "bad_geometry"
    if potential is not None and potential.unsupported(structure.atomic_numbers):
        return "unsupported_element"
    if max_atoms is not None and len(structure) > max_atoms:
        return "too_many_atoms"
    return ""


def min_distance(structure) -> float:
    """Shortest distance between two atoms, periodic images (and an atom's own images) included."""
    centers, points, _images, dists = structure.get_neighbor_list(r=MIN_DISTANCE + 1e-6)
    real = dists > 1e-8
    if np.any(real):
        return float(dists[real].min())
    # an atom on top of another (distance 0) is also found, as a zero distance between different sites
    same = (dists <= 1e-8) & (centers != points)
    return 0.0 if np.any(same) else float("inf")


def _step_guard(energy: float, forces: np.ndarray, stress: np.ndarray | None, positions: np.ndarray,
                cell: np.ndarray, volume0: float) -> str:
    if not math.isfinite(energy) or not np.all(np.isfinite(forces)) or (
            stress is not None and not np.all(np.isfinite(stress))):
        return "relax_nan"
    if not (np.all(np.isfinite(positions)) and np.all(np.isfinite(cell))):
        return "relax_exploded"
    if forces.size and float(np.linalg.norm(forces, axis=1).max()) > MAX_FORCE:
        return "relax_exploded"
    volume = abs(float(np.linalg.det(cell)))
    if not (volume0 / MAX_VOLUME_RATIO <= volume <= volume0 * MAX_VOLUME_RATIO):
        return "relax_volume"
    return ""


def _final_checks(result: RelaxResult) -> None:
    if result.reason or result.structure is None:
        return
    if min_distance(result.structure) < MIN_DISTANCE:
        result.reason = "relax_overlap"
    elif not result.converged:
        result.reason = "relax_unconverged"


# ---------------------------------------------------------------- per structure (ASE)


@dataclass
class _Outcome:
    atoms: object
    energy: float = float("nan")
    max_force: float = float("nan")
    n_steps: int = 0
    converged: bool = False
    reason: str = ""
    error: str = ""


def relax_ase(atoms, calculator, fmax: float, max_steps: int, volume0: float | None = None) -> _Outcome:
    """FIRE + FrechetCellFilter on one ASE Atoms (modified in place), with the step guards."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    volume0 = volume0 or atoms.get_volume()
    out = _Outcome(atoms)
    atoms.calc = calculator
    try:
        opt = FIRE(FrechetCellFilter(atoms), logfile=None)
        for converged in opt.irun(fmax=fmax, steps=max_steps):
            energy = float(atoms.get_potential_energy())
            forces = np.asarray(atoms.get_forces())
            stress = np.asarray(atoms.get_stress())
            out.reason = _step_guard(energy, forces, stress, atoms.positions, np.asarray(atoms.cell), volume0)
            out.energy = energy
            out.max_force = float(np.linalg.norm(forces, axis=1).max()) if len(forces) else 0.0
            out.converged = bool(converged)
            if out.reason:
                break
        out.n_steps = int(opt.nsteps)
    except Exception as exc:  # the potential raised: this structure alone fails
        out.reason, out.error = "relax_error", f"{type(exc).__name__}: {exc}"[:500]
    return out


# ---------------------------------------------------------------- batched (torch-sim)


_RETAINED = False


def retain_freed_memory() -> bool:
    """Make glibc keep freed memory in the heap instead of returning it to the kernel (once).

    Why: a batched forward and backward of a few hundred atoms allocates hundreds of MB of
    edge tensors. glibc serves each block above its mmap threshold with a fresh ``mmap`` and
    unmaps it on free, so every model call page-faults its whole working set again (measured
    with 7net-0 on CPU, 442 atoms: 0.8 million faults per call, system time up to the model's
    own compute time; small single-structure calls stay under the threshold and never pay it).
    Serving all blocks from the heap and not trimming it removes that; the heap then stays at
    its peak, which ``max_atoms_in_batch`` bounds. A no-op (False) where the C library is not glibc.
    """
    global _RETAINED
    if _RETAINED:
        return True
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
    _RETAINED = bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 1 << 30))
    return _RETAINED


@dataclass
class BatchStats:
    """What the batched path did (benchmarks and tests read it)."""

    model_calls: int = 0
    fire_steps: int = 0
    max_systems: int = 0
    fallbacks: int = 0
    system_steps: int = 0
    errors: list[str] = field(default_factory=list)


def relax_batched(atoms_list: list, model, fmax: float, max_steps: int, *, max_atoms_in_batch: int = 512,
                  volume0: Sequence[float] | None = None, stats: BatchStats | None = None) -> list[_Outcome]:
    """Relax many structures with one torch-sim FIRE state and in-flight refill.

    ``max_atoms_in_batch`` is the ``max_memory_scaler`` (memory scales with the atom count here):
    the sum of atoms of the systems in flight never exceeds it.
    """
    import torch
    import torch_sim as ts
    from torch_sim.autobatching import InFlightAutoBatcher
    from torch_sim.optimizers import frechet_cell_fire

    stats = stats if stats is not None else BatchStats()
    n = len(atoms_list)
    outcomes = [_Outcome(a) for a in atoms_list]
    if n == 0:
        return outcomes
    volume0 = list(volume0) if volume0 is not None else [a.get_volume() for a in atoms_list]
    if max(len(a) for a in atoms_list) > max_atoms_in_batch:
        raise UsageError(f"a structure has more atoms than the batch limit {max_atoms_in_batch}")
    init_fn, step_fn = frechet_cell_fire(model=model)
    device, dtype = model.device, model.dtype
    if torch.device(device).type == "cpu":
        retain_freed_memory()

    # Initial evaluation in chunks that respect the same atom budget.
    singles, chunk, chunk_atoms = [], [], 0
    calls0 = getattr(model, "calls", None)
    local_calls = 0

    def flush() -> None:
        nonlocal chunk, chunk_atoms, local_calls
        if chunk:
            state = init_fn(ts.io.atoms_to_state(chunk, device=device, dtype=dtype))
            stats.model_calls += 1
            local_calls += 1
            singles.extend(state.split())
        chunk, chunk_atoms = [], 0

    for a in atoms_list:
        if chunk_atoms + len(a) > max_atoms_in_batch:
            flush()
        chunk.append(a)
        chunk_atoms += len(a)
    flush()

    batcher = InFlightAutoBatcher(model, memory_scales_with="n_atoms", max_memory_scaler=float(max_atoms_in_batch),
                                  return_indices=True)
    batcher.load_states(singles)
    state, _done, idx = batcher.next_batch(None, None)
    idx = list(idx)
    steps = [0] * n
    finished: list = []
    while True:
        done = _evaluate(state, idx, outcomes, steps, fmax, max_steps, volume0)
        state, completed, new_idx = batcher.next_batch(state, torch.as_tensor(done, dtype=torch.bool))
        finished.extend(completed)
        if state is None:
            break
        idx = list(new_idx)
        stats.max_systems = max(stats.max_systems, int(state.n_systems))
        state = step_fn(state)
        stats.model_calls += 1
        local_calls += 1
        stats.fire_steps += 1
        stats.system_steps += len(idx)
        for i in idx:
            steps[i] += 1
        if stats.fire_steps % 50 == 0:
            log.info("batched FIRE step %d: %d systems in flight, %d of %d finished", stats.fire_steps,
                     len(idx), len(finished), n)
    ordered = batcher.restore_original_order(finished)
    for i, final in enumerate(ordered):
        out = outcomes[i]
        out.n_steps = steps[i]
        atoms = ts.io.state_to_atoms(final)[0]
        out.atoms = atoms
        energy = float(final.energy.reshape(-1)[0])
        forces = final.forces.detach().cpu().numpy().astype(float)
        out.energy = energy
        out.max_force = float(np.linalg.norm(forces, axis=1).max()) if len(forces) else 0.0
    if calls0 is not None:
        # the adapter counts its own forward calls: the init chunks and one per FIRE step
        stats.model_calls += int(model.calls - calls0) - local_calls
    return outcomes


def _evaluate(state, idx: list[int], outcomes: list[_Outcome], steps: list[int], fmax: float, max_steps: int,
              volume0: list[float]) -> list[bool]:
    """Per system of the batch: finished (converged, guard tripped or cap reached)?"""
    system_idx = state.system_idx.detach().cpu().numpy()
    forces = state.forces.detach().cpu().numpy().astype(float)
    positions = state.positions.detach().cpu().numpy().astype(float)
    cells = state.row_vector_cell.detach().cpu().numpy().astype(float)
    energies = state.energy.detach().cpu().numpy().astype(float).reshape(-1)
    stresses = state.stress.detach().cpu().numpy().astype(float)
    cell_forces = state.cell_forces.detach().cpu().numpy().astype(float)
    done = []
    for b, i in enumerate(idx):
        mask = system_idx == b
        f = forces[mask]
        reason = _step_guard(float(energies[b]), f, stresses[b], positions[mask], cells[b], volume0[i])
        atom_fmax = float(np.linalg.norm(f, axis=1).max()) if len(f) else 0.0
        cell_fmax = float(np.linalg.norm(cell_forces[b], axis=1).max())
        converged = not reason and max(atom_fmax, cell_fmax) < fmax
        outcomes[i].reason = reason
        outcomes[i].converged = converged
        done.append(bool(reason) or converged or steps[i] >= max_steps)
    return done


# ---------------------------------------------------------------- protocol


def relax_structures(structures: list, protocol: Sequence[RelaxStep], get_potential: Callable[[str], object], *,
                     batched: bool = True, max_atoms_in_batch: int = 512, stats: BatchStats | None = None,
                     progress: Callable[[int, int], None] | None = None) -> list[RelaxResult]:
    """Relax pymatgen structures through every protocol step; a guard stops a structure early.

    ``get_potential(name)`` returns a loaded :class:`~matra_hpc.screen.potentials.Potential`.
    Structures must have passed :func:`precheck`. Returns one :class:`RelaxResult` each, in order.
    """
    from pymatgen.io.ase import AseAtomsAdaptor

    stats = stats if stats is not None else BatchStats()
    atoms_list = [AseAtomsAdaptor.get_atoms(s) for s in structures]
    volume0 = [a.get_volume() for a in atoms_list]
    total_steps = [0] * len(atoms_list)
    last: list[_Outcome | None] = [None] * len(atoms_list)
    alive = list(range(len(atoms_list)))
    for k, step in enumerate(protocol):
        if not alive:
            break
        potential = get_potential(step.potential)
        model = potential.batched() if batched else None
        todo = [atoms_list[i] for i in alive]
        outs: list[_Outcome]
        if model is not None:
            try:
                outs = relax_batched(todo, model, step.fmax, step.max_steps, max_atoms_in_batch=max_atoms_in_batch,
                                     volume0=[volume0[i] for i in alive], stats=stats)
            except Exception as exc:  # a batch-level failure: redo these one by one, guarded each
                log.warning("batched relaxation failed (%s: %s); per-structure fallback for %d structures",
                            type(exc).__name__, exc, len(todo))
                stats.fallbacks += 1
                stats.errors.append(f"{type(exc).__name__}: {exc}"[:300])
                model = None
        if model is None:
            calc = potential.calculator()
            outs = []
            for j, a in enumerate(todo):
                outs.append(relax_ase(a, calc, step.fmax, step.max_steps, volume0=volume0[alive[j]]))
                if progress:
                    progress(j + 1, len(todo))
        still = []
        for i, out in zip(alive, outs, strict=True):
            atoms_list[i] = out.atoms
            total_steps[i] += out.n_steps
            last[i] = out
            if not out.reason:
                still.append(i)
        log.info("relaxation step %d/%d (%s): %d structures, %d passed the guards", k + 1, len(protocol),
                 step.label(), len(alive), len(still))
        alive = still
    results = []
    for i, out in enumerate(last):
        results.append(_result(out, atoms_list[i], volume0[i], total_steps[i]))
    return results


def _result(out: _Outcome | None, atoms, volume0: float, n_steps: int) -> RelaxResult:
    from pymatgen.io.ase import AseAtomsAdaptor

    if out is None:  # an empty protocol: nothing was relaxed
        return RelaxResult(None, reason="relax_unconverged")
    structure = None
    cell = np.asarray(atoms.cell)
    if np.all(np.isfinite(cell)) and np.all(np.isfinite(atoms.positions)) and abs(np.linalg.det(cell)) > 1e-9:
        structure = AseAtomsAdaptor.get_structure(atoms)
        structure.remove_site_property("magmom") if "magmom" in structure.site_properties else None
    n = max(len(atoms), 1)
    volume = abs(float(np.linalg.det(cell))) if np.all(np.isfinite(cell)) else float("nan")
    result = RelaxResult(
        structure=structure,
        energy_per_atom=out.energy / n if math.isfinite(out.energy) else float("nan"),
        max_force=out.max_force, n_steps=n_steps, converged=out.converged, reason=out.reason,
        volume_change=volume / volume0 - 1.0 if volume0 > 0 else float("nan"), error=out.error,
    )
    _final_checks(result)
    return result
