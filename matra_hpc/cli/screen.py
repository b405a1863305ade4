"""`matra-hpc screen GEN --out screened.zarr`: relax, check and rank generated candidates, in process.

Also under ``mpirun -n N matra-hpc screen ...`` (ranks share the task queue and the hull
references). ``matra-hpc submit screen ... --array N`` runs N independent array tasks (one GPU
each with ``--gpus-per-node 1``); the last one to finish consolidates. Rerun to resume.
"""

from __future__ import annotations

import argparse
import json
import os

from matra_hpc.launch.stages import SubmittableStage
from matra_hpc.screen.config import ScreenConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = ScreenConfig(generated="", out="")
    parser.add_argument("generated", metavar="GEN", help="generated store (Zarr), consolidated")
    parser.add_argument("--out", required=True, help="screened store to write (Zarr); rerun to resume")
    parser.add_argument("--relax", default=d.relax,
                        help="protocol POTENTIAL:FMAX[:MAX_STEPS],... over sevennet, chgnet, m3gnet, orb, alignn "
                             "(default %(default)s; the paper: m3gnet:0.1,orb:0.02)")
    parser.add_argument("--max-steps", type=int, default=d.max_steps,
                        help="FIRE step cap per protocol step (default %(default)s)")
    parser.add_argument("--weights", default=None,
                        help="NAME=PATH[,NAME=PATH]: weights per potential (default: embedded sevennet/chgnet)")
    parser.add_argument("--hull-reference", default=None,
                        help="token store or CIF/extxyz folder: hull references, relaxed like the candidates "
                             "(default: elemental ASE references only)")
    parser.add_argument("--ehull-direct", default=None, choices=["alignn"],
                        help="also record a direct e-hull prediction of the relaxed structure (e_hull_direct) "
                             "by this model; weights via --weights alignn=FOLDER (config.json, best_model.pt)")
    parser.add_argument("--reference-max-ehull", type=float, default=d.reference_max_ehull,
                        help="use references whose DFT e-hull is at most this, eV/atom (default %(default)s)")
    parser.add_argument("--reference-cache", default=None,
                        help="folder of relaxed reference energies shared between screenings (default: OUT/references)")
    parser.add_argument("--novelty-index", default=None, help="index from `matra-hpc index build` (known crystals)")
    parser.add_argument("--temps", dest="temperatures", default=None,
                        help="screen only these temperatures of GEN (start:stop:step or a list)")
    parser.add_argument("--limit", type=int, default=None,
                        help="relax only the first N screenable rows in (T, row) order")
    parser.add_argument("--shards", type=int, default=d.shards, help="shards (tasks) per temperature")
    parser.add_argument("--no-batch", dest="batched", action="store_false",
                        help="relax one structure at a time with ASE (the baseline path)")
    parser.add_argument("--batch-atoms", type=int, default=d.batch_atoms,
                        help="atoms in flight per batched model call (torch-sim max_memory_scaler; "
                             "default %(default)s, raise it on a GPU)")
    parser.add_argument("--max-atoms", type=int, default=d.max_atoms,
                        help="skip candidates with more sites than this (default %(default)s)")
    parser.add_argument("--conventional", dest="primitive", action="store_false",
                        help="relax the conventional cell as generated (default: its primitive cell)")
    parser.add_argument("--device", default=None, help="torch device (default: the launcher's)")
    parser.add_argument("--threads", type=int, default=d.threads,
                        help="CPU threads of the potential (default: torch's, i.e. OMP_NUM_THREADS)")


def build_config(args: argparse.Namespace) -> ScreenConfig:
    def absolute(path: str | None) -> str | None:
        return os.path.abspath(os.path.expanduser(path)) if path else None

    weights = args.weights
    if weights:
        parts = []
        for part in weights.split(","):
            name, sep, path = part.partition("=")
            parts.append(f"{name.strip()}={absolute(path.strip())}" if sep and path.strip() else part)
        weights = ",".join(parts)
    config = ScreenConfig(
        generated=absolute(args.generated), out=absolute(args.out), relax=args.relax, max_steps=args.max_steps,
        weights=weights, hull_reference=absolute(args.hull_reference), ehull_direct=args.ehull_direct,
        reference_max_ehull=args.reference_max_ehull, reference_cache=absolute(args.reference_cache),
        novelty_index=absolute(args.novelty_index),
        temperatures=args.temperatures, limit=args.limit, shards=args.shards, batched=args.batched,
        batch_atoms=args.batch_atoms, max_atoms=args.max_atoms, primitive=args.primitive, device=args.device,
        threads=args.threads,
    )
    return config


def cmd_screen(args: argparse.Namespace) -> int:
    from matra_hpc.launch.environment import context_from_environment
    from matra_hpc.screen.stage import run_screen

    config = build_config(args)
    ctx = context_from_environment()
    summary = run_screen(config, ctx)
    if ctx.is_main:
        print(json.dumps(summary, indent=2))
    return 0


def cmd_report_screen(args: argparse.Namespace) -> int:
    from matra_hpc.cli.output import print_report
    from matra_hpc.screen.report import build_report, default_prefix, format_table, write_report

    report = build_report(args.store, baseline=args.baseline)
    print_report(report, write_report(report, args.out or default_prefix(args.store)), args, format_table)
    return 0


def add_report(kinds: argparse._SubParsersAction) -> None:
    """``report screen STORE``: registered by ``cli/report.py`` beside ``report generate``."""
    parser = kinds.add_parser("screen", help="Table 1 (screening funnel per T) and Fig. 4 (e-hull) + PNG",
                              description="Per-temperature screening counts and e-hull distribution of a "
                                          "screened store as JSON, CSV and a PNG.")
    parser.add_argument("store", help="screened store (Zarr)")
    parser.add_argument("--baseline", default=None, help="screened store of a baseline (e.g. PyXtal) for Fig. 4")
    parser.add_argument("--out", default=None,
                        help="path prefix of the files (default: next to the store, STORE.report.{json,csv,png})")
    parser.add_argument("--json", action="store_true", help="print the JSON instead of the table")
    parser.set_defaults(func=cmd_report_screen)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("screen", help="relax generated crystals with ML potentials, check and rank them",
                            description=__doc__)
    add_arguments(parser)
    parser.set_defaults(func=cmd_screen)


SUBMIT_STAGES = [
    SubmittableStage(
        name="screen",
        kind="function",
        help="screen a generated store as a job, or a job array over shards (--array N)",
        add_arguments=add_arguments,
        build_config=build_config,
        config_cls=ScreenConfig,
        run="matra_hpc.screen.stage:run_screen",
    )
]
