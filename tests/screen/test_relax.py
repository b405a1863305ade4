"""Relaxation: a rattled crystal relaxes back; batched == per structure; guards give reasons."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from screen_helpers import nacl, rattled, silicon

from matra_hpc.errors import UsageError
from matra_hpc.screen.relax import BatchStats, RelaxStep, parse_protocol, precheck, relax_structures


def test_rattled_crystal_relaxes_back(sevennet):
    from matra_hpc.tokens import encode, prototype_hash

    start = rattled(silicon().get_primitive_structure(), seed=0, amount=0.05)
    calc = sevennet.calculator()
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = AseAtomsAdaptor.get_atoms(start)
    atoms.calc = calc
    e0 = atoms.get_potential_energy() / len(atoms)
    [res] = relax_structures([start], [RelaxStep("sevennet", 0.01, 150)], lambda _n: sevennet)
    assert res.ok and res.converged and res.max_force < 0.01
    assert res.energy_per_atom < e0 - 1e-3
    assert prototype_hash(encode(res.structure)) == prototype_hash(encode(silicon()))


def test_batched_one_call_per_step_agrees_with_ase(sevennet):
    structures = [rattled(s.get_primitive_structure(), seed=i) for i, s in
                  enumerate([nacl(5.5), nacl(5.8), silicon(5.4), silicon(5.6)])]
    protocol = [RelaxStep("sevennet", 0.05, 60)]
    stats = BatchStats()
    model = sevennet.batched()
    calls = model.calls
    batched = relax_structures([s.copy() for s in structures], protocol, lambda _n: sevennet, stats=stats)
    # every structure fits one batch: one initial evaluation, then one model call per FIRE step
    assert model.calls - calls == stats.model_calls == 1 + stats.fire_steps
    assert stats.max_systems == len(structures) and stats.fallbacks == 0
    one_by_one = relax_structures([s.copy() for s in structures], protocol, lambda _n: sevennet, batched=False)
    for b, a in zip(batched, one_by_one, strict=True):
        assert b.ok and a.ok
        assert b.energy_per_atom == pytest.approx(a.energy_per_atom, abs=0.005)


def test_in_flight_refill_respects_the_atom_budget(sevennet):
    structures = [rattled(silicon(5.3 + 0.05 * i).get_primitive_structure(), seed=i) for i in range(3)]
    stats = BatchStats()
    results = relax_structures(structures, [RelaxStep("sevennet", 0.1, 15)], lambda _n: sevennet,
                               max_atoms_in_batch=4, stats=stats)
    assert stats.max_systems == 2  # 2 atoms each, 4 atoms in flight: finished ones are replaced
    assert all(r.structure is not None and r.n_steps > 0 for r in results)


def test_step_cap_gives_relax_unconverged(sevennet):
    [res] = relax_structures([rattled(nacl(6.2).get_primitive_structure(), seed=3, amount=0.1)],
                             [RelaxStep("sevennet", 0.001, 2)], lambda _n: sevennet)
    assert res.reason == "relax_unconverged" and res.n_steps == 2 and res.structure is not None


def test_prechecks_catch_bad_candidates(sevennet):
    overlap = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.05, 0, 0]])
    tiny = Structure(Lattice.cubic(1.0), ["Na"], [[0, 0, 0]])
    huge = Structure(Lattice.cubic(1000.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    nan = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    nan_coords = np.array(nan.frac_coords)
    nan_coords[1, 0] = np.nan
    nan = Structure(nan.lattice, ["Na", "Cl"], nan_coords)
    for bad in (overlap, tiny, huge, nan):
        assert precheck(bad, sevennet, 64) == "bad_geometry"
    assert precheck(nacl(), sevennet, 64) == ""
    assert precheck(nacl(), sevennet, 4) == "too_many_atoms"
    assert precheck(Structure(Lattice.cubic(3.0), ["Og"], [[0, 0, 0]]), sevennet, 64) == "unsupported_element"


def test_protocol_parsing():
    steps = parse_protocol("sevennet:0.05,orb:0.02:50", 100)
    assert steps == [RelaxStep("sevennet", 0.05, 100), RelaxStep("orb", 0.02, 50)]
    for bad in ("", "sevennet", "nope:0.1", "sevennet:-1", "sevennet:x"):
        with pytest.raises(UsageError):
            parse_protocol(bad)


def test_protocol_chains_two_potentials(tmp_path, sevennet):
    """``sevennet:...,chgnet:...``: the second step starts where the first ended, on the ASE path."""
    import torch
    from chgnet.model import CHGNet

    from matra_hpc.screen.potentials import load_potential

    model = CHGNet(atom_fea_dim=8, bond_fea_dim=8, angle_fea_dim=8, num_radial=5, num_angular=5, n_conv=1,
                   mlp_hidden_dims=[8], atom_graph_cutoff=5, bond_graph_cutoff=3)
    torch.save({"model": model.as_dict()}, tmp_path / "chgnet.pth")
    chgnet = load_potential("chgnet", str(tmp_path / "chgnet.pth"))
    used = []

    def get(name):
        used.append(name)
        return {"sevennet": sevennet, "chgnet": chgnet}[name]

    stats = BatchStats()
    [res] = relax_structures([rattled(silicon().get_primitive_structure(), seed=5)],
                             [RelaxStep("sevennet", 0.5, 3), RelaxStep("chgnet", 1e-4, 2)], get, stats=stats)
    assert used == ["sevennet", "chgnet"]
    assert stats.fire_steps >= 1 and res.n_steps == stats.system_steps + 2  # chgnet: 2 ASE steps
    assert res.reason == "relax_unconverged" and np.isfinite(res.energy_per_atom)




def test_freed_large_blocks_stay_in_the_heap():
    """After ``retain_freed_memory`` a large block freed and requested again is not paged in anew
    (by default glibc maps such a block freshly each time: one page fault per 4 KiB page)."""
    import ctypes
    import resource
    import sys

    from matra_hpc.screen.relax import retain_freed_memory

    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's mallopt")
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    size = 256 << 20  # above glibc's largest mmap threshold (32 MiB), like a big batch's edge tensors

    def faults_of_a_block() -> int:
        # no Python allocation between malloc and free: nothing else can split the freed block
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = libc.malloc(size)
        libc.memset(block, 1, size)
        libc.free(block)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    assert retain_freed_memory()
    faults_of_a_block()  # the heap grows once
    assert faults_of_a_block() < 1000  # ~65,000 without
