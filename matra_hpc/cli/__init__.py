"""The ``matra-hpc`` command line.

One module per command group; each exposes ``register(subparsers)`` and its handlers take the
parsed arguments, build a stage config, call one stage function and print the result. Heavy
imports (torch, pymatgen) happen inside handlers so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from matra_hpc import __version__
from matra_hpc.errors import MatraError

# Order is the order in ``--help``: the pipeline order.
GROUP_MODULES = ["demo", "tokens", "data", "train", "generate", "index", "screen", "evaluate", "report", "jobs", "dft"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="matra-hpc",
        description="Matra-Genoa crystal generation as HPC batch stages (local executor or Slurm).",
    )
    parser.add_argument("--version", action="version", version=f"matra-hpc {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in GROUP_MODULES:
        importlib.import_module(f"matra_hpc.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.func(args) or 0)
    except MatraError as exc:
        print(f"matra-hpc: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("matra-hpc: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
