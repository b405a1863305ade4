"""Evaluation commands: `baseline pyxtal`, `eval conditioning`, `eval recovery`, `report all`.

``matra-hpc baseline pyxtal --n N --out base.zarr`` writes the charge-balanced PyXtal baseline
as a generated store (also under ``mpirun``, and as a job: ``matra-hpc submit baseline-pyxtal``).
``eval conditioning`` and ``eval recovery`` call the generate and screen stages and analyse their
stores; ``report all`` gathers every report into one HTML page and its Markdown twin.
"""

from __future__ import annotations

import argparse
import json
import os

from matra_hpc.evaluate.baseline import BaselineConfig
from matra_hpc.launch.stages import SubmittableStage


def _absolute(path: str | None) -> str | None:
    return os.path.abspath(os.path.expanduser(path)) if path else None


def add_baseline_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=1000, help="structures to write (default %(default)s)")
    parser.add_argument("--out", required=True, help="baseline store to write (a generated store); rerun to resume")
    parser.add_argument("--shards", type=int, default=1, help="shards (tasks shared by MPI ranks)")
    parser.add_argument("--seed", type=int, default=0, help="base seed; each shard derives its own")
    parser.add_argument("--min-elements", type=int, default=2, help="fewest elements per crystal (default 2)")
    parser.add_argument("--max-elements", type=int, default=3, help="most elements per crystal (default 3)")
    parser.add_argument("--max-count", type=int, default=6,
                        help="largest count of an element in the charge-neutral formula unit (default 6)")
    parser.add_argument("--max-atoms", type=int, default=40, help="atoms in the conventional cell (default 40)")
    parser.add_argument("--max-sites", type=int, default=15, help="Wyckoff sites, as the training filter")
    parser.add_argument("--train-store", default=None, help="token store whose structures flag dup_train")
    parser.add_argument("--run-id", default=None, help="id prefix of the rows (default: run dir name or time)")


def build_baseline_config(args: argparse.Namespace) -> BaselineConfig:
    config = BaselineConfig(
        out=_absolute(args.out), n=args.n, shards=args.shards, seed=args.seed, min_elements=args.min_elements,
        max_elements=args.max_elements, max_count=args.max_count, max_atoms=args.max_atoms,
        max_sites=args.max_sites, train_store=_absolute(args.train_store), run_id=args.run_id,
    )
    config.validate()
    return config


def cmd_baseline(args: argparse.Namespace) -> int:
    from matra_hpc.evaluate.baseline import run_baseline
    from matra_hpc.launch.environment import context_from_environment

    config = build_baseline_config(args)
    ctx = context_from_environment()
    summary = run_baseline(config, ctx)
    if ctx.is_main:
        print(json.dumps(summary, indent=2))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    baseline = sub.add_parser("baseline", help="baselines to compare a model run with (pyxtal)",
                              description="Baselines written as generated stores, so screen and reports take them.")
    kinds = baseline.add_subparsers(dest="baseline_kind", metavar="KIND")
    kinds.required = True
    pyx = kinds.add_parser("pyxtal", help="random symmetric charge-balanced crystals (paper Fig. 4 baseline)",
                           description=__doc__)
    add_baseline_arguments(pyx)
    pyx.set_defaults(func=cmd_baseline)


SUBMIT_STAGES = [
    SubmittableStage(
        name="baseline-pyxtal",
        kind="mpi",
        help="the charge-balanced PyXtal baseline as an MPI job (ranks share the shards)",
        add_arguments=add_baseline_arguments,
        build_config=build_baseline_config,
        config_cls=BaselineConfig,
        run="matra_hpc.evaluate.baseline:run_baseline",
        default_launch={"tasks_per_node": 2},
    )
]
