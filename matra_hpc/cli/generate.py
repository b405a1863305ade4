"""`matra-hpc generate`: sample temperatures x shards into a generated store, in this process.

Also under ``mpirun -n N matra-hpc generate ...``: the ranks share the task queue. The same
arguments submit it as an MPI job: ``matra-hpc submit generate ... --cluster local|slurm``.
"""

from __future__ import annotations

import argparse
import json

from matra_hpc.generate.config import DEFAULT_TEMPS, GenerateConfig
from matra_hpc.launch.stages import SubmittableStage
from matra_hpc.util import dataclass_defaults


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = dataclass_defaults(GenerateConfig)
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory (or a training output dir)")
    parser.add_argument("--out", required=True, help="generated store to write (Zarr); rerun to resume")
    parser.add_argument("--temps", default=DEFAULT_TEMPS,
                        help="start:stop:step (stop included, 2 decimals) or a comma list (default %(default)s)")
    parser.add_argument("--per-temp", type=int, default=d["per_temp"],
                        help="structures per temperature (default %(default)s)")
    parser.add_argument("--shards", type=int, default=d["shards"], help="shards (queue tasks) per temperature")
    parser.add_argument("--condition", default=d["condition"],
                        help="e.g. 'elements=Al,Ca,Cu;spacegroups=191,194;stability=low' (also composition=, wyckoff=)")
    parser.add_argument("--train-store", default=d["train_store"], help="token store whose structures flag dup_train")
    parser.add_argument("--seed", type=int, default=d["seed"], help="base seed; each (T, shard) derives its own")
    parser.add_argument("--batch-size", type=int, default=d["batch_size"],
                        help="rows sampled together (default %(default)s)")
    parser.add_argument("--max-length", type=int, default=d["max_length"],
                        help="length guard in tokens; cut rows count as invalid (default: grammar bound)")
    parser.add_argument("--value-noise", type=float, default=d["value_noise"],
                        help="Gaussian noise on continuous values, sigma = this x T (default %(default)s: deterministic)")
    parser.add_argument("--min-distance", type=float, default=d["min_distance"],
                        help="bond check threshold in Angstrom (default %(default)s)")
    parser.add_argument("--max-sites", type=int, default=d["max_sites"],
                        help="Wyckoff sites allowed per structure (default %(default)s)")
    parser.add_argument("--no-kv-cache", dest="use_cache", action="store_false",
                        help="recompute the whole prefix each step (slow; for checks)")
    parser.add_argument("--check-workers", type=int, default=d["check_workers"],
                        help="processes per rank checking rows while the next task samples (default %(default)s)")
    parser.add_argument("--device", default=d["device"],
                        help="torch device (default: the rank's device from the launcher)")
    parser.add_argument("--run-id", default=d["run_id"],
                        help="id prefix of the candidates (default: run dir name or time)")


def build_config(args: argparse.Namespace) -> GenerateConfig:
    from matra_hpc.generate.temperatures import parse_temperatures

    return GenerateConfig(
        checkpoint=args.checkpoint, out=args.out,
        temperatures=tuple(parse_temperatures(args.temps)), per_temp=args.per_temp, shards=args.shards,
        condition=args.condition, train_store=args.train_store,
        seed=args.seed, batch_size=args.batch_size, max_length=args.max_length, value_noise=args.value_noise,
        min_distance=args.min_distance, max_sites=args.max_sites, use_cache=args.use_cache,
        check_workers=args.check_workers, device=args.device, run_id=args.run_id,
    )


def cmd_generate(args: argparse.Namespace) -> int:
    from matra_hpc.generate.stage import run_generate
    from matra_hpc.launch.environment import context_from_environment

    config = build_config(args)
    ctx = context_from_environment()
    summary = run_generate(config, ctx)
    if ctx.is_main:
        print(json.dumps(summary, indent=2))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("generate", help="sample crystals over temperatures x shards in this process",
                            description=__doc__)
    add_arguments(parser)
    parser.set_defaults(func=cmd_generate)


SUBMIT_STAGES = [
    SubmittableStage(
        name="generate",
        kind="mpi",
        help="sample crystals over temperatures x shards as an MPI job (ranks pull tasks from a queue)",
        add_arguments=add_arguments,
        build_config=build_config,
        config_cls=GenerateConfig,
        run="matra_hpc.generate.stage:run_generate",
        # two ranks unless a profile or flag says otherwise: the local executor then runs mpirun -n 2
        default_launch={"tasks_per_node": 2},
    )
]
