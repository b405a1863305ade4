"""Potential loaders: every one is real code, tested with a small model built and saved here
(hub downloads cannot work on compute nodes). Missing weights fail in one line, naming the path."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from ase.build import bulk

from matra_hpc.errors import UsageError
from matra_hpc.screen.potentials import check_weights, default_weights, load_potential, parse_weights


def _energy(potential) -> float:
    atoms = bulk("NaCl", "rocksalt", a=5.6)
    atoms.calc = potential.calculator()
    energy = atoms.get_potential_energy()
    assert np.isfinite(energy) and atoms.get_forces().shape == (2, 3)
    return energy


def test_sevennet_small_checkpoint_batched_and_ase(tmp_path):
    import torch_sim as ts
    from sevenn.model_build import build_E3_equivariant_model
    from sevenn.util import load_checkpoint

    config = copy.deepcopy(load_checkpoint(default_weights("sevennet")).config)
    config.update(num_convolution_layer=2, channel=8, lmax=1, irreps_manual=False, conv_denominator=20.0,
                  weight_nn_hidden_neurons=[8], device="cpu")
    torch.manual_seed(0)
    model = build_E3_equivariant_model(config)
    path = tmp_path / "small7net.pth"
    torch.save({"config": config, "model_state_dict": model.state_dict()}, path)
    pot = load_potential("sevennet", str(path))
    assert pot.sha256 and 11 in pot.elements and pot.unsupported([11, 118]) == [118]
    e_ase = _energy(pot)
    state = ts.io.atoms_to_state([bulk("NaCl", "rocksalt", a=5.6), bulk("Si", "diamond", a=5.4)],
                                 device=torch.device("cpu"), dtype=torch.float64)
    out = pot.batched()(state)
    assert out["energy"].shape == (2,) and out["stress"].shape == (2, 3, 3)
    assert float(out["energy"][0]) == pytest.approx(e_ase, abs=1e-4)


def test_chgnet_small_model(tmp_path):
    from chgnet.model import CHGNet

    model = CHGNet(atom_fea_dim=8, bond_fea_dim=8, angle_fea_dim=8, num_radial=5, num_angular=5, n_conv=1,
                   mlp_hidden_dims=[8], atom_graph_cutoff=5, bond_graph_cutoff=3)
    path = tmp_path / "chgnet.pth"
    torch.save({"model": model.as_dict()}, path)
    pot = load_potential("chgnet", str(path))
    assert pot.batched() is None  # ASE path only
    _energy(pot)


def test_m3gnet_small_model(tmp_path):
    from matgl.apps.pes import Potential
    from matgl.models import M3GNet

    model = M3GNet(element_types=("Na", "Cl"), dim_node_embedding=8, dim_edge_embedding=8, units=8, nblocks=1,
                   max_n=3, max_l=3, is_intensive=False)
    Potential(model=model, calc_stresses=True).save(str(tmp_path / "m3g"))
    pot = load_potential("m3gnet", str(tmp_path / "m3g"))
    assert pot.elements == frozenset({11, 17})
    _energy(pot)


def test_orb_small_model_with_architecture_sidecar(tmp_path):
    from orb_models.forcefield.pretrained import orb_v3_conservative_architecture

    args = {"latent_dim": 16, "base_mlp_hidden_dim": 16, "base_mlp_depth": 1, "head_mlp_hidden_dim": 16,
            "head_mlp_depth": 1, "num_message_passing_steps": 1}
    path = tmp_path / "orb.ckpt"
    torch.save(orb_v3_conservative_architecture(device="cpu", **args).state_dict(), path)
    (tmp_path / "orb.ckpt.json").write_text(json.dumps(args))
    _energy(load_potential("orb", str(path)))
    # weights that do not fit the architecture fail at load, before any job runs
    (tmp_path / "bad.ckpt").write_bytes(path.read_bytes())
    with pytest.raises(RuntimeError):
        load_potential("orb", str(tmp_path / "bad.ckpt"))


def test_alignn_pure_torch_model(tmp_path):
    from pymatgen.core import Lattice, Structure
    from screen_helpers import tiny_alignn

    folder = tiny_alignn(tmp_path / "alignn")
    pot = load_potential("alignn", str(folder))
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.6), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert np.isfinite(pot.predict(nacl))
    _energy(pot)


def test_missing_weights_are_one_line_errors(tmp_path):
    with pytest.raises(UsageError, match=f"potential orb: weights {tmp_path}/none.ckpt do not exist"):
        check_weights("orb", str(tmp_path / "none.ckpt"))
    with pytest.raises(UsageError, match="m3gnet has no embedded weights"):
        check_weights("m3gnet", None)
    with pytest.raises(UsageError, match="unknown potential"):
        parse_weights("mace=/x")
    with pytest.raises(UsageError, match="NAME=PATH"):
        parse_weights("orb")
    assert check_weights("sevennet", None).endswith("checkpoint_sevennet_0.pth")
    assert parse_weights("orb=/a, m3gnet=/b") == {"orb": "/a", "m3gnet": "/b"}
