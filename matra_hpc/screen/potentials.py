"""ML potentials behind one small interface: a name -> an ASE calculator and, where we batch it,
a torch-sim ``ModelInterface``.

Potentials (contract J, ``--relax NAME:FMAX,...``, weights with ``--weights NAME=PATH``):

- ``sevennet``: SevenNet checkpoints (``.pth``); default the 7net-0 weights embedded in the
  sevenn wheel, so the default protocol works offline. Batched through our own adapter
  (torch-sim 0.3.0's SevenNet wrapper imports a module sevenn 0.13 removed).
- ``chgnet``: CHGNet (``from_file``); default the weights in the chgnet wheel. ASE path.
- ``m3gnet``: a matgl model directory (``matgl.load_model``). ASE path, stress in eV/A^3.
- ``orb``: an orb-models v3 conservative state dict (``.ckpt``/``.pt``), architecture
  arguments from an optional ``<weights>.json`` beside it (defaults: orb-v3 conservative).
  ASE path, never compiled on the CPU.
- ``alignn``: a pure-torch ALIGNN (``ALIGNNAtomWisePure``; dgl does not import with our
  torch) from a folder with ``config.json`` and ``best_model.pt``; energy and forces through
  our calculator, and ``predict`` for a direct e-hull estimate.

Hub downloads cannot work on a cluster's compute nodes, so nothing here downloads: a weight
path that does not exist is a ``UsageError`` naming it, raised by :func:`check_weights` before
any job starts.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from matra_hpc.errors import UsageError

__all__ = ["POTENTIALS", "Potential", "default_weights", "check_weights", "load_potential", "parse_weights"]

POTENTIALS = ("sevennet", "chgnet", "m3gnet", "orb", "alignn")


def default_weights(name: str) -> str | None:
    """The weights a potential uses when none are given (None: it needs ``--weights``)."""
    if name == "sevennet":
        import sevenn

        return str(Path(sevenn.__file__).parent / "pretrained_potentials" / "SevenNet_0__11Jul2024"
                   / "checkpoint_sevennet_0.pth")
    if name == "chgnet":
        import chgnet

        return str(Path(chgnet.__file__).parent / "pretrained" / "0.3.0" / "chgnet_0.3.0_e29f68s314m37.pth.tar")
    return None


def parse_weights(spec: str | None) -> dict[str, str]:
    """``sevennet=PATH,orb=PATH`` -> {name: path}; unknown names are a usage error."""
    out: dict[str, str] = {}
    for part in (spec or "").split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, path = part.partition("=")
        name = name.strip()
        if not sep or not path.strip():
            raise UsageError(f"--weights {spec!r}: expected NAME=PATH[,NAME=PATH], got {part!r}")
        if name not in POTENTIALS:
            raise UsageError(f"--weights: unknown potential {name!r}; known: {', '.join(POTENTIALS)}")
        out[name] = path.strip()
    return out


def check_weights(name: str, weights: str | None) -> str:
    """The weight path a potential will load, checked to exist (one-line error otherwise)."""
    if name not in POTENTIALS:
        raise UsageError(f"unknown potential {name!r}; known: {', '.join(POTENTIALS)}")
    path = weights or default_weights(name)
    if path is None:
        raise UsageError(f"potential {name} has no embedded weights: give --weights {name}=PATH")
    if not Path(path).exists():
        raise UsageError(f"potential {name}: weights {path} do not exist")
    if name == "alignn" and not (Path(path) / "config.json").is_file():
        raise UsageError(f"potential alignn: {path} has no config.json (a folder with config.json "
                         "and best_model.pt is expected)")
    return str(path)


def weights_sha256(path: str | Path) -> str:
    """Content hash of a weight file, or of every file of a weight folder (for provenance)."""
    p = Path(path)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


@dataclass
class Potential:
    """A loaded potential: ASE calculators on demand, a batched model where there is one."""

    name: str
    weights: str
    device: str
    elements: frozenset[int] | None
    """Atomic numbers the potential has parameters for (None: any)."""
    make_calculator: Callable[[], Any]
    make_batched: Callable[[], Any] | None = None
    predict: Callable[[Any], float] | None = None
    """Direct property estimate of a structure (alignn), else None."""
    sha256: str = ""
    _batched: Any = field(default=None, repr=False)
    _calculator: Any = field(default=None, repr=False)

    def calculator(self):
        """This process's ASE calculator of the potential (built once: building loads the model).

        Sequential reuse is safe: an ASE calculator recomputes whenever its atoms change. Use
        :meth:`new_calculator` for one that is used side by side with another.
        """
        if self._calculator is None:
            self._calculator = self.make_calculator()
        return self._calculator

    def new_calculator(self):
        return self.make_calculator()

    def batched(self):
        """The torch-sim ``ModelInterface`` of this potential, or None where only ASE exists."""
        if self.make_batched is None:
            return None
        if self._batched is None:
            self._batched = self.make_batched()
        return self._batched

    def unsupported(self, numbers) -> list[int]:
        """Atomic numbers of ``numbers`` the potential has no parameters for."""
        if self.elements is None:
            return []
        return sorted({int(z) for z in numbers} - self.elements)

    def describe(self) -> dict[str, str]:
        return {"potential": self.name, "weights": self.weights, "sha256": self.sha256}


_CACHE: dict[tuple[str, str, str], Potential] = {}
_LOCK = threading.Lock()


def load_potential(name: str, weights: str | None = None, device: str = "cpu") -> Potential:
    """Load a potential once per process (cached by name, weights and device)."""
    path = check_weights(name, weights)
    key = (name, str(Path(path).resolve()), device)
    with _LOCK:
        if key not in _CACHE:
            loader = {"sevennet": _load_sevennet, "chgnet": _load_chgnet, "m3gnet": _load_m3gnet,
                      "orb": _load_orb, "alignn": _load_alignn}[name]
            pot = loader(path, device)
            pot.sha256 = weights_sha256(path)
            _CACHE[key] = pot
        return _CACHE[key]


# ---------------------------------------------------------------- sevennet


def _load_sevennet(path: str, device: str) -> Potential:
    import torch
    from sevenn.util import load_checkpoint

    checkpoint = load_checkpoint(path)
    type_map = checkpoint.config.get("_type_map") or {}

    def build():
        model = checkpoint.build_model()
        return model

    def calculator():
        from sevenn.calculator import SevenNetCalculator

        return SevenNetCalculator(model=build(), file_type="model_instance", device=torch.device(device))

    def batched():
        return SevenNetBatched(build(), device=device)

    return Potential("sevennet", path, device, frozenset(int(z) for z in type_map) or None, calculator, batched)


def _torch_sim_base():
    from torch_sim.models.interface import ModelInterface

    return ModelInterface


class SevenNetBatched(_torch_sim_base()):
    """SevenNet as a torch-sim model: every system of the state in one graph batch, one call.

    torch-sim 0.3.0 ships a wrapper that imports ``sevenn.calculator.torch_script_type``,
    which sevenn 0.13 no longer has; this adapter builds the same batched graph directly.
    """

    def __init__(self, model, device: str = "cpu") -> None:
        import torch

        super().__init__()
        if not model.type_map or model.cutoff == 0.0:
            raise UsageError("sevennet checkpoint lacks a type map or a cutoff")
        self._device = torch.device(device)
        self._dtype = torch.float32  # SevenNet runs in float32 only
        self._compute_stress = True
        self._compute_forces = True
        self._memory_scales_with = "n_atoms_x_density"
        model.eval_type_map = torch.tensor(data=True)
        model.set_is_batch_data(True)
        self.model = model.to(self._device).eval()
        self.cutoff = torch.tensor(float(model.cutoff))
        self.calls = 0
        """Forward calls so far (tests count them: one per optimizer step for the whole batch)."""

    def forward(self, state, **_kwargs) -> dict[str, Any]:
        import sevenn._keys as key
        import torch
        from sevenn.atom_graph_data import AtomGraphData
        from torch_geometric.loader.dataloader import Collater
        from torch_sim.elastic import voigt_6_to_full_3x3_stress
        from torch_sim.neighbors import vesin_nl_ts

        self.calls += 1
        if state.device != self._device:
            state = state.to(self._device)
        graphs = []
        n_systems = int(state.n_systems)
        for b in range(n_systems):
            mask = state.system_idx == b
            pos = state.positions[mask].to(self._dtype)
            cell = state.row_vector_cell[b].to(self._dtype)
            numbers = state.atomic_numbers[mask]
            edge_idx, shifts_idx = vesin_nl_ts(positions=pos, cell=cell, pbc=bool(state.pbc),
                                               cutoff=self.cutoff)
            shifts_idx = shifts_idx.to(self._dtype)
            shifts = torch.mm(shifts_idx, cell)
            data = AtomGraphData(**{
                key.NODE_FEATURE: numbers,
                key.ATOMIC_NUMBERS: numbers.to(dtype=torch.int64, device=self._device),
                key.POS: pos,
                key.EDGE_IDX: edge_idx,
                key.EDGE_VEC: pos[edge_idx[1]] - pos[edge_idx[0]] + shifts,
                key.CELL: cell,
                key.CELL_SHIFT: shifts_idx,
                key.CELL_VOLUME: torch.det(cell),
                key.NUM_ATOMS: torch.tensor(len(numbers), device=self._device),
                key.DATA_MODALITY: None,
                key.INFO: {},
            })
            graphs.append(data)
        batch = Collater([], follow_batch=None, exclude_keys=None)(graphs).to(self._device)
        output = self.model(batch)
        out_dtype = state.positions.dtype
        stress = -voigt_6_to_full_3x3_stress(output[key.PRED_STRESS].detach()[..., [0, 1, 2, 4, 5, 3]])
        return {
            "energy": output[key.PRED_TOTAL_ENERGY].detach().reshape(n_systems).to(out_dtype),
            "forces": output[key.PRED_FORCE].detach().to(out_dtype),
            "stress": stress.to(out_dtype),
        }


# ---------------------------------------------------------------- chgnet


def _load_chgnet(path: str, device: str) -> Potential:
    from chgnet.model import CHGNet

    def build():
        return CHGNet.from_file(path)

    model = build()
    n_elements = int(getattr(model.composition_model, "max_num_elements", 94) or 94)

    def calculator():
        from chgnet.model.dynamics import CHGNetCalculator

        return CHGNetCalculator(model=build(), use_device=device, on_isolated_atoms="ignore")

    return Potential("chgnet", path, device, frozenset(range(1, n_elements + 1)), calculator)


# ---------------------------------------------------------------- m3gnet (matgl)


def _load_m3gnet(path: str, device: str) -> Potential:
    import matgl

    potential = matgl.load_model(path)
    elements = None
    element_types = getattr(getattr(potential, "model", None), "element_types", None)
    if element_types:
        from pymatgen.core import Element

        elements = frozenset(Element(s).Z for s in element_types)

    def calculator():
        from matgl.ext.ase import PESCalculator

        # matgl reports stress in GPa unless told otherwise; ASE's filters expect eV/A^3
        return PESCalculator(matgl.load_model(path), stress_unit="eV/A3")

    return Potential("m3gnet", path, device, elements, calculator)


# ---------------------------------------------------------------- orb


def orb_architecture_args(path: str | Path) -> dict[str, Any]:
    """Architecture arguments of an orb state dict: ``<weights>.json`` beside it, else defaults.

    Keys: those of ``orb_v3_conservative_architecture`` plus ``radius`` and ``max_num_neighbors``
    of the graph (default 6 A and 120, the released conservative "inf" models).
    """
    sidecar = Path(str(path) + ".json")
    if sidecar.is_file():
        args = json.loads(sidecar.read_text())
        if not isinstance(args, dict):
            raise UsageError(f"{sidecar} must hold a JSON object of orb architecture arguments")
        return args
    return {}


def _load_orb(path: str, device: str) -> Potential:
    def build():
        import torch
        from orb_models.forcefield.atomic_system import SystemConfig
        from orb_models.forcefield.pretrained import orb_v3_conservative_architecture

        args = dict(orb_architecture_args(path))
        # the graph settings of the released "inf" models unless the sidecar says otherwise
        system = SystemConfig(radius=float(args.pop("radius", 6.0)),
                              max_num_neighbors=int(args.pop("max_num_neighbors", 120)))
        model = orb_v3_conservative_architecture(device=device, system_config=system, **args)
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state_dict, strict=True)
        model = model.to(device).eval()
        for p in model.parameters():
            p.requires_grad = False
        return model

    build()  # fail now, before any job, if the weights do not fit the architecture

    def calculator():
        from orb_models.forcefield.calculator import ORBCalculator

        return ORBCalculator(build(), device=device)

    return Potential("orb", path, device, None, calculator)


# ---------------------------------------------------------------- alignn (pure torch)


def _load_alignn(path: str, device: str) -> Potential:
    import torch
    from alignn.models.alignn_atomwise_pure import ALIGNNAtomWisePure, ALIGNNAtomWisePureConfig

    folder = Path(path)
    config = json.loads((folder / "config.json").read_text())
    config = config.get("model", config)
    weights = folder / "best_model.pt"
    if not weights.is_file():
        raise UsageError(f"potential alignn: weights {weights} do not exist")
    model = ALIGNNAtomWisePure(ALIGNNAtomWisePureConfig(**config))
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model = model.to(device).eval()
    cutoff = float(config.get("cutoff", 8.0))

    def run(structure) -> dict[str, Any]:
        from alignn.torch_graph_builder import build_pure_torch_graph
        from pymatgen.io.jarvis import JarvisAtomsAdaptor

        atoms = JarvisAtomsAdaptor.get_atoms(structure)
        g, lg = build_pure_torch_graph(atoms, two_body_cutoff=cutoff, device=device)
        lattice = torch.tensor(np.asarray(structure.lattice.matrix), dtype=torch.float32, device=device)
        return model([g, lg, lattice])

    def predict(structure) -> float:
        out = run(structure)
        value = out["out"] if isinstance(out, dict) else out
        return float(torch.as_tensor(value).detach().reshape(-1)[0])

    def calculator():
        return AlignnCalculator(run)

    return Potential("alignn", path, device, None, calculator, predict=predict)


def _ase_calculator_base():
    from ase.calculators.calculator import Calculator

    return Calculator


class AlignnCalculator(_ase_calculator_base()):
    """ASE calculator over a pure-torch ALIGNN force field (energy, forces, stress if trained)."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, run: Callable[[Any], dict[str, Any]], **kwargs) -> None:
        super().__init__(**kwargs)
        self._run = run

    def calculate(self, atoms=None, properties=None, system_changes=None) -> None:
        from ase.calculators.calculator import Calculator, all_changes
        from pymatgen.io.ase import AseAtomsAdaptor

        Calculator.calculate(self, atoms, properties, system_changes or all_changes)
        out = self._run(AseAtomsAdaptor.get_structure(self.atoms))
        n = len(self.atoms)
        energy = float(np.asarray(out["out"].detach()).reshape(-1)[0])
        forces = np.asarray(out.get("grad").detach()).reshape(n, 3) if out.get("grad") is not None else np.zeros((n, 3))
        stress = out.get("stresses")
        voigt = np.zeros(6)
        # ALIGNN computes stress only when trained with it (else a placeholder), in GPa
        if stress is not None and getattr(stress, "numel", lambda: 0)() == 9:
            s = np.asarray(stress.detach()).reshape(3, 3) / 160.21766208
            voigt = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
        self.results = {"energy": energy, "free_energy": energy, "forces": forces, "stress": voigt}
