"""`matra-hpc demo`: the README demo, end to end on the shipped data, local executor."""

from __future__ import annotations

import argparse
import json


def cmd_demo(args: argparse.Namespace) -> int:
    from matra_hpc.demo import DemoConfig, run_demo

    config = DemoConfig(
        out=args.out, train_minutes=args.train_minutes, per_temp=args.per_temp, temps=args.temps
    )
    print(json.dumps(run_demo(config)))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from matra_hpc.demo import DemoConfig

    d = DemoConfig()
    parser = sub.add_parser(
        "demo",
        help="run the README demo end to end on the local executor",
        description="Tokenize the shipped MP structures, train the tiny model, sample a "
        "temperature sweep with mpirun and write the reports. Rerun to resume.",
    )
    parser.add_argument("--out", default=d.out, help="output folder (default %(default)s)")
    parser.add_argument("--train-minutes", type=float, default=d.train_minutes,
                        help="training time of the tiny model (default %(default)s)")
    parser.add_argument("--per-temp", type=int, default=d.per_temp, help="structures per temperature")
    parser.add_argument("--temps", default=d.temps, help="temperature sweep start:stop:step or a list")
    parser.set_defaults(func=cmd_demo)
