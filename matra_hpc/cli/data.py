"""`matra-hpc data`: fetch published data sets, prepare and consolidate token stores.

``data prepare`` runs in this process, with a local process pool (``--workers``) and also
under ``mpirun -n K matra-hpc data prepare ...`` (each rank writes its own shards). The same
arguments submit it as an MPI job: ``matra-hpc submit data-prepare ...``.
"""

from __future__ import annotations

import argparse
import json
import time

from matra_hpc.data.config import DataPrepareConfig
from matra_hpc.launch.stages import SubmittableStage
from matra_hpc.util import dataclass_defaults

HOLD_OUT_HELP = ("keep every structure of exactly this chemical system (e.g. Cd-I) out of the store, "
                 "recorded in its attrs for `eval recovery`")


def add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    d = dataclass_defaults(DataPrepareConfig)
    parser.add_argument("sources", nargs="+", metavar="SOURCE",
                        help="KIND[:NAME]=PATH with KIND mp|alexandria|wbm|folder (a DIR from `data fetch`, or "
                             "files), or 'flla' for the demo set")
    parser.add_argument("--out", required=True, help="token store to write (Zarr v3); rerun to resume")
    parser.add_argument("--max-wyckoff", type=int, default=d["max_wyckoff"],
                        help="reject more Wyckoff sites (default %(default)s)")
    parser.add_argument("--max-ehull", type=float, default=d["max_ehull"],
                        help="drop Alexandria entries above this eV/atom (default %(default)s)")
    parser.add_argument("--val-frac", type=float, default=d["val_frac"], help="validation fraction (default %(default)s)")
    parser.add_argument("--seed", type=int, default=d["seed"],
                        help="salt of the prototype-hash split (default %(default)s)")
    parser.add_argument("--workers", type=int, default=d["workers"], help="processes per rank (default %(default)s)")
    parser.add_argument("--shard-size", type=int, default=d["shard_size"],
                        help="input records per shard (default %(default)s)")
    parser.add_argument("--limit", type=int, default=d["limit"], help="read only the first N records of each source")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a store at --out that was made from other inputs or settings")
    parser.add_argument("--hold-out-system", default=None, metavar="A-B-C", help=HOLD_OUT_HELP)


def build_prepare_config(args: argparse.Namespace) -> DataPrepareConfig:
    return DataPrepareConfig(
        sources=list(args.sources), out=args.out, max_wyckoff=args.max_wyckoff, max_ehull=args.max_ehull,
        val_frac=args.val_frac, seed=args.seed, workers=args.workers, shard_size=args.shard_size,
        limit=args.limit, overwrite=args.overwrite, hold_out_system=args.hold_out_system,
    )


def _summary(report: dict) -> dict:
    """The report without the id lists (those stay in report.json)."""
    out = {k: v for k, v in report.items() if k not in ("rejected", "filtered", "duplicates")}
    for key in ("rejected", "filtered"):
        out[key] = {reason: v["count"] for reason, v in report[key].items()}
    out["duplicates"] = report["duplicates"]["count"]
    out["report"] = f"{report['store']}/report.json"
    return out


def cmd_prepare(args: argparse.Namespace) -> int:
    from matra_hpc.data.stage import run_data_prepare
    from matra_hpc.launch.environment import context_from_environment

    config = build_prepare_config(args)
    ctx = context_from_environment()
    report = run_data_prepare(config, ctx)
    if ctx.is_main:
        print(json.dumps(_summary(report), indent=1))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from matra_hpc.context import local_context
    from matra_hpc.data.stage import demo_config, run_data_prepare

    start = time.perf_counter()
    config = demo_config(args.out, workers=args.workers)
    config.overwrite = args.overwrite
    config.hold_out_system = args.hold_out_system
    report = run_data_prepare(config, local_context())
    summary = _summary(report)
    summary["wall_seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(summary, indent=1))
    return 0


def cmd_consolidate(args: argparse.Namespace) -> int:
    from matra_hpc.data.stage import run_data_consolidate

    print(json.dumps(_summary(run_data_consolidate(args.store)), indent=1))
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from matra_hpc.data.fetch import fetch_dataset

    only = [n for n in args.files.split(",") if n] if args.files else None
    results = fetch_dataset(args.dataset, args.dest, url_base=args.url_base, only=only, progress=not args.quiet)
    for r in results:
        print(f"{r.status:10s} {r.path}  sha256:{r.sha256}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="fetch data sets and prepare token stores", description=__doc__)
    cmds = data.add_subparsers(dest="data_command", metavar="COMMAND")
    cmds.required = True

    fetch = cmds.add_parser("fetch", help="download a published data set (resumable, checksum-verified)")
    fetch.add_argument("dataset", choices=["mp", "alexandria", "wbm"])
    fetch.add_argument("--dest", required=True, help="directory for the files (and checksums.json)")
    fetch.add_argument("--url-base", default=None, help="a mirror holding the same file names")
    fetch.add_argument("--files", default=None, help="comma-separated subset of the data set's file names")
    fetch.add_argument("--quiet", action="store_true", help="no progress bar")
    fetch.set_defaults(func=cmd_fetch)

    prepare = cmds.add_parser("prepare", help="filter and tokenize sources into a token store",
                              description=DataPrepareConfig.__doc__)
    add_prepare_arguments(prepare)
    prepare.set_defaults(func=cmd_prepare)

    demo = cmds.add_parser("demo", help="prepare the vendored flla_2015 demo set (3,938 MP structures)")
    demo.add_argument("--out", required=True, help="token store to write")
    demo.add_argument("--workers", type=int, default=None, help="processes (default: min(8, CPUs))")
    demo.add_argument("--overwrite", action="store_true", help="replace a store made with other settings")
    demo.add_argument("--hold-out-system", default=None, metavar="A-B-C", help=HOLD_OUT_HELP)
    demo.set_defaults(func=cmd_demo)

    consolidate = cmds.add_parser("consolidate", help="rebuild the top-level view of a store from its shards")
    consolidate.add_argument("store")
    consolidate.set_defaults(func=cmd_consolidate)


SUBMIT_STAGES = [
    SubmittableStage(
        name="data-prepare",
        kind="mpi",
        help="filter and tokenize sources into a token store as an MPI job (each rank writes its shards)",
        add_arguments=add_prepare_arguments,
        build_config=build_prepare_config,
        config_cls=DataPrepareConfig,
        run="matra_hpc.data.stage:run_data_prepare",
        # two ranks unless a profile or flag says otherwise: the local executor then runs mpirun -n 2
        default_launch={"tasks_per_node": 2},
    )
]
