"""What the report commands print: one format for every stage's report."""

from __future__ import annotations

import argparse
import json


def print_report(report: dict, files, args: argparse.Namespace, format_table, extra: str = "") -> None:
    """The report as JSON (``--json``) or its table, then the files written beside the store."""
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_table(report))
        if not report["complete"]:
            print("note: the run is incomplete (some shards are not finished)")
    print(f"wrote {files.json}, {files.csv}, {files.png}{extra}")
