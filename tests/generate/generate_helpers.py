"""Builders of small generated stores for the tests of this folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pymatgen.core import Lattice, Structure

from matra_hpc.generate.checks import StructureCheck
from matra_hpc.generate.table import GeneratedTable, TableBuilder


def rock_salt(a: float) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def fake_check(structure: Structure | None, key: str, complete: bool = True) -> StructureCheck:
    return StructureCheck(
        complete=complete, decodes=structure is not None, bonds_ok=structure is not None,
        spacegroup_ok=structure is not None, sampled_spacegroup=225 if complete else 0,
        found_spacegroup=225 if structure is not None else 0, prototype_hash=key,
        error="" if structure is not None else "LengthGuard: cut before <end>", structure=structure,
        formula="NaCl" if structure is not None else "", cif="data_x" if structure is not None else "",
        n_sites_primitive=2 if structure is not None else 0,
    )


def build_table(rows: list[tuple[Structure | None, str]], prefix: str) -> GeneratedTable:
    builder = TableBuilder()
    for i, (structure, key) in enumerate(rows):
        tokens = list(range(i + 3))
        builder.add(f"{prefix}:{i}", tokens, [float("nan")] * len(tokens), fake_check(structure, key, structure is not None),
                    dup_train=False)
    return builder.build()


FINGERPRINT = {"temperatures": [0.7, 1.0], "shards": 2, "per_temp": 4, "checkpoint_sha256": "x"}


FINGERPRINT = {"temperatures": [0.7, 1.0], "shards": 2, "per_temp": 4, "checkpoint_sha256": "x"}


# The reference generation every other test compares with: 2 temperatures x 2 shards x 3 rows.
GEN_ARGS = ["--temps", "0.7,1.3", "--per-temp", "6", "--shards", "2", "--batch-size", "2", "--seed", "5",
            "--run-id", "ref"]


def cli(*args: str, cwd: Path, timeout: float = 300, mpi_ranks: int = 0) -> subprocess.CompletedProcess:
    """``matra-hpc ARGS`` in a fresh process (under ``mpirun -n N`` when mpi_ranks > 0)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "matra_hpc", *args]
    if mpi_ranks:
        command = [str(Path(sys.executable).parent / "mpirun"), "-n", str(mpi_ranks), *command]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
