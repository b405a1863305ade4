"""Novelty index and run uniqueness (issue 11 item 5): real token stores, real StructureMatcher.

The known crystals are a handful of prototypes written as CIFs and prepared into a token store by
the data stage, so the index reads exactly what a user's store holds.
"""

from __future__ import annotations

import bz2
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from matra_hpc.context import RunContext, local_context
from matra_hpc.errors import StoreError, UsageError
from matra_hpc.screen import index_format as fmt
from matra_hpc.screen.index_sources import structure_hash
from matra_hpc.screen.novelty import NoveltyIndex, RunUniqueness, build_index

warnings.filterwarnings("ignore", message=".*(fractional coordinates|electronegativity).*")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pymatgen's CIF parser on the broken file


def known_crystals() -> dict[str, Structure]:
    sg = Structure.from_spacegroup
    return {
        "nacl": sg("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "cscl": sg("Pm-3m", Lattice.cubic(4.12), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "srtio3": sg("Pm-3m", Lattice.cubic(3.905), ["Sr", "Ti", "O"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]]),
        "rutile": sg("P4_2/mnm", Lattice.tetragonal(4.594, 2.959), ["Ti", "O"], [[0, 0, 0], [0.3048, 0.3048, 0]]),
        "zno": sg("P6_3mc", Lattice.hexagonal(3.25, 5.21), ["Zn", "O"], [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.382]]),
        "fes2": sg("Pa-3", Lattice.cubic(5.42), ["Fe", "S"], [[0, 0, 0], [0.385, 0.385, 0.385]]),
    }


@pytest.fixture(scope="module")
def token_store(tmp_path_factory) -> str:
    from matra_hpc.data.config import DataPrepareConfig
    from matra_hpc.data.stage import run_data_prepare

    base = tmp_path_factory.mktemp("known")
    folder = base / "cifs"
    folder.mkdir()
    for name, s in known_crystals().items():
        s.to(filename=str(folder / f"{name}.cif"))
    out = base / "tokens.zarr"
    run_data_prepare(DataPrepareConfig(sources=[f"folder={folder}"], out=str(out), shard_size=4), local_context())
    return str(out)


@pytest.fixture(scope="module")
def index_path(token_store, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("idx") / "ref.index"
    summary = build_index([token_store], out)
    assert summary["n_entries"] == len(known_crystals()) and summary["n_hashed"] == summary["n_entries"]
    return str(out)


def _id_of(index: NoveltyIndex, name: str) -> str:
    ids = [index.entry_id(e) for e in range(len(index))]
    return next(i for i in ids if i.endswith(name))


def shifted_supercell_shuffled(s: Structure, seed: int = 0) -> Structure:
    out = s.copy()
    out.translate_sites(list(range(len(out))), [0.137, 0.291, 0.413])
    out.make_supercell([[1, 1, 0], [0, 1, 0], [0, 0, 2]])
    order = np.random.default_rng(seed).permutation(len(out))
    return Structure.from_sites([out[i] for i in order])


def lowered(s: Structure, seed: int = 1, sigma: float = 0.04) -> Structure:
    """What a relaxation that breaks symmetry leaves: every atom moved a little, the cell strained."""
    out = s.copy()
    rng = np.random.default_rng(seed)
    for i in range(len(out)):
        out.translate_sites([i], rng.normal(0, sigma, 3), frac_coords=False)
    out.apply_strain([0.012, -0.008, 0.02])
    return out


def test_known_crystal_in_another_setting_and_lower_symmetry_is_not_novel(index_path) -> None:
    index = NoveltyIndex.open(index_path)
    crystals = known_crystals()
    for name in ("nacl", "rutile", "zno"):
        want = _id_of(index, name)
        s = crystals[name]
        moved = shifted_supercell_shuffled(s)
        assert index.find(moved) == want
        low = lowered(s)
        # The distortion really changes the key (the hash bucket alone would miss it) ...
        assert structure_hash(low) != structure_hash(s)
        before = index.stats["formula_hits"]
        # ... and the formula bucket with StructureMatcher still finds the crystal.
        assert index.find(low) == want
        assert index.stats["formula_hits"] == before + 1
    # Noise that breaks rock salt's F centring: pymatgen's plain verdict is "different" (reduced
    # cells of 8 and 2 sites); the retry with attempt_supercell still finds the crystal.
    from pymatgen.analysis.structure_matcher import StructureMatcher

    broken = lowered(crystals["nacl"], seed=0, sigma=0.08)
    assert not StructureMatcher().fit(broken, crystals["nacl"])
    assert index.find(broken) == _id_of(index, "nacl")
    assert NoveltyIndex.open(index_path, supercell_retry=False).find(broken) is None
    # Same formula, other structure: NaCl in the CsCl type; TiO2 as anatase; unknown chemistry.
    nacl_b2 = Structure.from_spacegroup("Pm-3m", Lattice.cubic(3.3), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    anatase = Structure.from_spacegroup("I4_1/amd", Lattice.tetragonal(3.785, 9.514), ["Ti", "O"],
                                        [[0, 0.75, 0.125], [0, 0.75, 0.3333]])
    kbr = Structure.from_spacegroup("Fm-3m", Lattice.cubic(6.6), ["K", "Br"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    for s in (nacl_b2, anatase, kbr):
        assert index.find(s) is None
    # An expanded copy is the same crystal (StructureMatcher scales volumes, as the paper's check).
    big = crystals["fes2"].copy()
    big.scale_lattice(big.volume * 1.1)
    assert index.find(big) == _id_of(index, "fes2")


def test_run_uniqueness_first_seen_across_settings() -> None:
    crystals = known_crystals()
    seen = RunUniqueness()
    assert seen.first_seen("run:T0.70:s0:0", crystals["rutile"]) is None
    assert seen.first_seen("run:T0.70:s0:1", crystals["nacl"]) is None
    assert seen.first_seen("run:T1.00:s1:0", shifted_supercell_shuffled(crystals["rutile"], 3)) == "run:T0.70:s0:0"
    assert seen.first_seen("run:T1.00:s1:1", lowered(crystals["nacl"])) == "run:T0.70:s0:1"
    assert seen.first_seen("run:T1.00:s1:3", lowered(crystals["nacl"], seed=0, sigma=0.08)) == "run:T0.70:s0:1"
    anatase = Structure.from_spacegroup("I4_1/amd", Lattice.tetragonal(3.785, 9.514), ["Ti", "O"],
                                        [[0, 0.75, 0.125], [0, 0.75, 0.3333]])
    assert seen.first_seen("run:T1.00:s1:2", anatase) is None
    assert len(seen) == 3


def _tables(path) -> dict[str, np.ndarray]:
    meta = json.loads((path / fmt.INDEX_FILE).read_text())
    out = {}
    for table in fmt.TABLES:
        for p in range(1 << meta["partition_bits"]):
            for kind, f in zip(("keys", "entries"), fmt.table_paths(path, table, p), strict=True):
                out[f"{table}-{p}-{kind}"] = np.load(f)
    return out


def test_array_tasks_partitions_and_resume_give_the_same_index(token_store, index_path, tmp_path) -> None:
    # Units of 2 rows; the second task of two finishes last and merges.
    out = tmp_path / "array.index"
    first = build_index([token_store], out, ctx=RunContext(rank=0, world_size=2), rows_per_unit=2)
    assert first["finalized"] is False and not (out / fmt.INDEX_FILE).exists()
    with pytest.raises(StoreError, match="unfinished index"):
        NoveltyIndex.open(out)
    # A unit killed half-way (folder without a manifest) is redone.
    (out / "parts" / "000-tokens-000001").mkdir()
    second = build_index([token_store], out, ctx=RunContext(rank=1, world_size=2), rows_per_unit=2)
    assert second["finalized"] is True and second["n_entries"] == len(known_crystals())
    assert second["n_parts"] == 3
    serial = NoveltyIndex.open(index_path)
    index = NoveltyIndex.open(out)
    assert [index.entry_id(e) for e in range(len(index))] == [serial.entry_id(e) for e in range(len(serial))]
    a, b = _tables(out), _tables(Path(index_path))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    # A rerun of a finished build returns it without touching it.
    assert build_index([token_store], out, rows_per_unit=2)["parts_built_here"] == 0
    # The merging task died after its claim: a rerun of the array merges again.
    (out / fmt.INDEX_FILE).unlink()
    assert (out / ".finalize-claim").exists()
    again = build_index([token_store], out, ctx=RunContext(rank=0, world_size=2), rows_per_unit=2)
    assert again["finalized"] is True and again["parts_built_here"] == 0
    assert NoveltyIndex.open(out).entry_id(0) == serial.entry_id(0)

    # Many partitions (tiny target size): same answers as one partition.
    many = tmp_path / "many.index"
    summary = build_index([token_store], many, rows_per_unit=4, partition_entries=1)
    assert summary["partitions"] > 1
    index = NoveltyIndex.open(many)
    keys = np.concatenate([np.load(fmt.table_paths(Path(index_path), "proto", 0)[0]), [np.uint64(12345)]])
    assert index.count_keys(keys).tolist() == serial.count_keys(keys).tolist() == [1] * (len(keys) - 1) + [0]
    assert index.find(lowered(known_crystals()["zno"])) == _id_of(index, "zno")


def test_stored_hashes_of_an_older_version_are_recomputed(token_store, tmp_path, monkeypatch) -> None:
    import matra_hpc.tokens.hashing as hashing

    monkeypatch.setattr(hashing, "HASH_VERSION", "v9")  # the store holds v1 hashes: all stale now
    out = tmp_path / "v9.index"
    summary = build_index([token_store], out)
    assert summary["hash_version"] == "v9" and summary["n_hashed"] == len(known_crystals())
    index = NoveltyIndex.open(out)
    rutile = known_crystals()["rutile"]
    h = structure_hash(rutile)
    assert h.startswith("v9:")
    key = fmt.proto_key(h, [site.specie.Z for site in rutile])
    assert [index.entry_id(e) for e in index.bucket(key)] == [_id_of(index, "rutile")]


@pytest.mark.mpi
def test_two_mpi_ranks_share_units_and_merge(token_store, index_path, tmp_path) -> None:
    out = tmp_path / "mpi.index"
    mpirun = Path(sys.executable).parent / "mpirun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(mpirun), "-n", "2", sys.executable, "-m", "matra_hpc", "index", "build", token_store,
                           "--out", str(out), "--rows-per-unit", "2", "--partition-entries", "2"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["partitions"] == 4 and summary["n_parts"] == 3
    ranks = {fmt.read_manifest(out, p["unit"])["rank"] for p in json.loads((out / fmt.INDEX_FILE).read_text())["parts"]}
    assert ranks == {0, 1}
    index, serial = NoveltyIndex.open(out), NoveltyIndex.open(index_path)
    assert [index.entry_id(e) for e in range(len(index))] == [serial.entry_id(e) for e in range(len(serial))]
    probe = np.concatenate([np.load(fmt.table_paths(Path(index_path), t, 0)[0]) for t in fmt.TABLES])
    for table in fmt.TABLES:
        assert index.count_keys(probe, table).tolist() == serial.count_keys(probe, table).tolist()
    assert index.find(lowered(known_crystals()["rutile"])) == _id_of(index, "rutile")


@pytest.mark.slurm
def test_slurm_job_array_builds_the_same_index(token_store, index_path, tmp_path, slurm) -> None:
    out, run_dir = tmp_path / "slurm.index", tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "matra_hpc", "submit", "index-build-array", token_store, "--out",
                           str(out), "--rows-per-unit", "2", "--array", "2", "--cluster", "slurm", "--profile",
                           "localci", "--run-dir", str(run_dir), "--wait"],
                          cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    jobs = json.loads((run_dir / "manifest.json").read_text())["jobs"]
    assert len(jobs) == 2 and all(j["state"] == "COMPLETED" for j in jobs)
    meta = json.loads((out / fmt.INDEX_FILE).read_text())
    assert {fmt.read_manifest(out, p["unit"])["rank"] for p in meta["parts"]} == {0, 1}
    a, b = _tables(out), _tables(Path(index_path))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_folder_and_generated_sources(tmp_path) -> None:
    from matra_hpc.generate.checks import StructureCheck
    from matra_hpc.generate.store import consolidate, init_store, write_shard
    from matra_hpc.generate.table import TableBuilder

    crystals = known_crystals()
    folder = tmp_path / "cifs"
    (folder / "sub").mkdir(parents=True)
    crystals["nacl"].to(filename=str(folder / "nacl.cif"))
    crystals["zno"].to(filename=str(folder / "sub" / "zno.cif"))
    (folder / "broken.cif").write_text("data_x\n_cell_length_a 3\n")
    # A generated store: one decoded row, one that did not decode.
    gen = tmp_path / "gen.zarr"
    init_store(gen, {"schema": "matra-hpc/generated/1", "temperatures": [0.7]},
               {"temperatures": [0.7], "shards": 1})
    builder = TableBuilder()
    for i, s in enumerate([crystals["rutile"], None]):
        check = StructureCheck(
            complete=True, decodes=s is not None, bonds_ok=True, spacegroup_ok=True, sampled_spacegroup=136,
            found_spacegroup=136, prototype_hash=structure_hash(s) if s else "", error="", structure=s,
            formula="TiO2" if s else "", cif="", n_sites_primitive=6 if s else 0)
        builder.add(f"run:T0.70:s0:{i}", [1, 2, 3], [float("nan")] * 3, check, dup_train=False)
    write_shard(gen, 0.7, 0, builder.build(), {})
    consolidate(gen)

    # A raw Alexandria file, read by the data stage's reader without its filters: a 2x2x2 supercell
    # of CsCl has 16 atoms, still one Wyckoff orbit per element, and a big P1 cell is kept by formula.
    from pymatgen.entries.computed_entries import ComputedStructureEntry

    alex = tmp_path / "alex"
    alex.mkdir()
    p1 = lowered(crystals["srtio3"] * (2, 2, 2))
    entries = [ComputedStructureEntry(s, -1.0 * len(s), data={"mat_id": mid}).as_dict()
               for s, mid in ((crystals["cscl"] * (2, 2, 2), "agm001"), (p1, "agm002"))]
    with bz2.open(alex / "alexandria_000.json.bz2", "wt") as fh:
        json.dump({"entries": entries}, fh)

    # A screened store: only the `screened` row is a known crystal (consolidate runs RunUniqueness).
    from matra_hpc.screen import store as sstore

    screened = tmp_path / "screened.zarr"
    sstore.init_store(screened, {"schema": sstore.SCHEMA, "run_id": "old", "temperatures": [1.0], "shards": 1},
                      {"generated": "x", "shards": 1}, [1.0])
    rows = sstore.RowBuilder()
    kbr = Structure.from_spacegroup("Fm-3m", Lattice.cubic(6.6), ["K", "Br"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    rows.add(id="old:T1.00:s0:0", status="screened", structure=lowered(kbr), relaxed=True)
    rows.add(id="old:T1.00:s0:1", status="failed", reason="relax_unconverged", structure=crystals["fes2"],
             relaxed=True)
    sstore.write_shard(screened, 1.0, 0, rows.build(), {"rank": 0})
    sstore.consolidate(screened)

    out = tmp_path / "mixed.index"
    summary = build_index([str(folder), str(gen), f"alexandria={alex}", str(screened)], out)
    assert summary["n_entries"] == 6 and summary["n_hashed"] == 4  # P1 cells have no prototype hash
    assert summary["skipped"] == {"parse_error": 1, "not_decoded": 1, "not_screened": 1}
    index = NoveltyIndex.open(out)
    assert index.find(shifted_supercell_shuffled(crystals["zno"])) == "cifs/sub/zno.cif"
    assert index.find(lowered(crystals["rutile"])) == "run:T0.70:s0:0"
    assert index.find(crystals["cscl"]) == "alex:agm001"
    assert index.find(p1) == "alex:agm002"
    assert index.find(shifted_supercell_shuffled(kbr)) == "old:T1.00:s0:0"
    assert index.find(crystals["fes2"]) is None


def test_refusals(token_store, index_path, tmp_path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not a novelty index"):
        build_index([token_store], other)
    with pytest.raises(UsageError, match="other sources"):
        build_index([token_store], index_path, rows_per_unit=1)
    with pytest.raises(UsageError, match="does not exist"):
        build_index([str(tmp_path / "missing.zarr")], tmp_path / "x.index")
    with pytest.raises(StoreError, match="not a novelty index"):
        NoveltyIndex.open(tmp_path)
    stale = tmp_path / "stale.index"
    build_index([token_store], stale)
    meta = json.loads((stale / fmt.INDEX_FILE).read_text())
    meta["hash_version"] = "v0"
    (stale / fmt.INDEX_FILE).write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="rebuild"):
        NoveltyIndex.open(stale)
    # A table file lost after the build.
    damaged = tmp_path / "damaged.index"
    build_index([token_store], damaged)
    fmt.table_paths(damaged, "formula", 0)[1].unlink()
    with pytest.raises(StoreError, match="damaged"):
        NoveltyIndex.open(damaged)
    # A folder that gained a file since its parts were built is another source: refused.
    folder = tmp_path / "few"
    folder.mkdir()
    known_crystals()["nacl"].to(filename=str(folder / "a.cif"))
    build_index([str(folder)], tmp_path / "few.index")
    known_crystals()["cscl"].to(filename=str(folder / "b.cif"))
    with pytest.raises(UsageError, match="other sources"):
        build_index([str(folder)], tmp_path / "few.index")
    with pytest.raises(UsageError, match="inside the source"):
        build_index([str(folder)], folder / "ref.index")


def test_cli_build_info_find(token_store, tmp_path, capsys) -> None:
    from matra_hpc.cli import main

    out = tmp_path / "cli.index"
    assert main(["index", "build", token_store, "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["n_entries"] == len(known_crystals())
    assert main(["index", "info", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["hash_version"] == fmt.hash_version(
        structure_hash(known_crystals()["nacl"]))
    probe = tmp_path / "probe.cif"
    shifted_supercell_shuffled(known_crystals()["srtio3"]).to(filename=str(probe))
    assert main(["index", "find", str(out), str(probe)]) == 0
    assert json.loads(capsys.readouterr().out)["match"].endswith("srtio3")
    assert main(["index", "build", str(tmp_path / "nope"), "--out", str(tmp_path / "n.index")]) == 2
