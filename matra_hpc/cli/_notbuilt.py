"""Commands of stages that are not built yet: they say so and exit 3."""

from __future__ import annotations

import argparse

from matra_hpc.errors import NotBuiltError


def add_not_built(sub: argparse._SubParsersAction, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=f"{help_text} (not built yet)", add_help=True)
    parser.add_argument("rest", nargs=argparse.REMAINDER)

    def handler(args: argparse.Namespace) -> int:
        raise NotBuiltError(f"'{name}' is not built yet in this version of matra-hpc")

    parser.set_defaults(func=handler)
    return parser
