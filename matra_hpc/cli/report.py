"""`matra-hpc report`: reports of a stage's store (`report generate|screen|all STORE`)."""

from __future__ import annotations

import argparse


def cmd_report_generate(args: argparse.Namespace) -> int:
    from matra_hpc.cli.output import print_report
    from matra_hpc.generate.report import build_report, default_prefix, format_table, write_report

    report = build_report(args.store)
    files = write_report(report, args.out or default_prefix(args.store))
    print_report(report, files, args, format_table,
                 f", {files.plausibility_png}" if files.plausibility_png else "")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    report = sub.add_parser("report", help="reports of a stage's store", description=__doc__)
    kinds = report.add_subparsers(dest="report_kind", metavar="KIND")
    kinds.required = True
    gen = kinds.add_parser("generate", help="per-temperature validity/duplicate table (paper Fig. 2) + PNG",
                           description="Per-temperature table of a generated store as JSON, CSV and a PNG plot.")
    gen.add_argument("store", help="generated store (Zarr)")
    gen.add_argument("--out", default=None,
                     help="path prefix of the files (default: next to the store, STORE.report.{json,csv,png})")
    gen.add_argument("--json", action="store_true", help="print the JSON instead of the table")
    gen.set_defaults(func=cmd_report_generate)

    from matra_hpc.cli.screen import add_report as add_report_screen

    add_report_screen(kinds)

    from matra_hpc.cli.evaluate import register_report_all

    register_report_all(kinds)
