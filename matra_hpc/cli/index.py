"""`matra-hpc index build|info|find`: the novelty index of known crystals.

``build`` runs in this process, also under ``mpirun -n N`` (ranks share the work units and
merge the tables together); ``matra-hpc submit index-build ...`` runs it as an MPI job, and
``matra-hpc submit index-build-array --array N ...`` as a job array (each task builds its units,
the last to finish merges).
"""

from __future__ import annotations

import argparse
import json
import os

from matra_hpc.launch.stages import SubmittableStage
from matra_hpc.screen.novelty import IndexBuildConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="+", metavar="SOURCES",
                        help="token, generated or screened stores (Zarr), or folders/files of structures "
                             "(CIF, POSCAR/.vasp, extxyz, pymatgen JSON)")
    parser.add_argument("--out", required=True, help="index folder to write (e.g. ref.index); rerun to resume")
    parser.add_argument("--rows-per-unit", type=int, default=IndexBuildConfig.rows_per_unit,
                        help="store rows per work unit (default %(default)s)")
    parser.add_argument("--partition-entries", type=int, default=IndexBuildConfig.partition_entries,
                        help="entries per table partition, roughly (default %(default)s)")


def build_config(args: argparse.Namespace) -> IndexBuildConfig:
    # Absolute paths: a job may start in another working directory than the submitting shell.
    config = IndexBuildConfig(sources=tuple(os.path.abspath(s) for s in args.sources),
                              out=os.path.abspath(args.out), rows_per_unit=args.rows_per_unit,
                              partition_entries=args.partition_entries)
    return config


def cmd_build(args: argparse.Namespace) -> int:
    """Build (or resume) a novelty index from stores and structure folders."""
    from matra_hpc.launch.environment import context_from_environment
    from matra_hpc.screen.novelty import run_index_build

    config = build_config(args)
    ctx = context_from_environment()
    summary = run_index_build(config, ctx)
    if ctx.is_main:
        print(json.dumps(summary, indent=2))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """Print what an index holds (entries, partitions, sources, hash version)."""
    from matra_hpc.screen.novelty import NoveltyIndex

    index = NoveltyIndex.open(args.index)
    meta = {k: v for k, v in index.meta.items() if k != "parts"}
    meta["n_parts"] = len(index.meta["parts"])
    print(json.dumps(meta, indent=2))
    return 0


def cmd_find(args: argparse.Namespace) -> int:
    """Look structure files up in an index: one JSON line per structure with the id it matches."""
    from matra_hpc.screen.novelty import NoveltyIndex
    from matra_hpc.tokens.structure_io import ParseFailure, iter_structures

    index = NoveltyIndex.open(args.index)
    for name, structure in iter_structures(args.structures):
        if isinstance(structure, ParseFailure) or not hasattr(structure, "lattice"):
            print(json.dumps({"structure": name, "error": "not a periodic structure"}))
            continue
        print(json.dumps({"structure": name, "match": index.find(structure)}))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("index", help="novelty index of known crystals (build, info, find)",
                            description=__doc__)
    actions = parser.add_subparsers(dest="index_command", metavar="ACTION")
    actions.required = True

    build = actions.add_parser("build", help=cmd_build.__doc__, description=cmd_build.__doc__)
    add_arguments(build)
    build.set_defaults(func=cmd_build)

    info = actions.add_parser("info", help=cmd_info.__doc__, description=cmd_info.__doc__)
    info.add_argument("index", help="index folder")
    info.set_defaults(func=cmd_info)

    find = actions.add_parser("find", help=cmd_find.__doc__, description=cmd_find.__doc__)
    find.add_argument("index", help="index folder")
    find.add_argument("structures", nargs="+", help="structure files or folders")
    find.set_defaults(func=cmd_find)


SUBMIT_STAGES = [
    SubmittableStage(
        name="index-build",
        kind="mpi",
        help="build a novelty index as an MPI job (ranks share the work units and the merge)",
        add_arguments=add_arguments,
        build_config=build_config,
        config_cls=IndexBuildConfig,
        run="matra_hpc.screen.novelty:run_index_build",
        default_launch={"tasks_per_node": 2},
    ),
    SubmittableStage(
        name="index-build-array",
        kind="function",
        help="build a novelty index as a job array (--array N: task i builds units i, i+N, ...; the last "
             "task to finish merges)",
        add_arguments=add_arguments,
        build_config=build_config,
        config_cls=IndexBuildConfig,
        run="matra_hpc.screen.novelty:run_index_build",
    ),
]
