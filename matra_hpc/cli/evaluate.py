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

from matra_hpc.errors import UsageError
from matra_hpc.evaluate.config import BaselineConfig
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
    parser.add_argument("--systems-from", default=None, metavar="GEN",
                        help="draw each row in the chemical system of a random candidate (decoded, bonds ok) of this generated store "
                             "(default: elements uniformly at random)")
    parser.add_argument("--run-id", default=None, help="id prefix of the rows (default: run dir name or time)")


def build_baseline_config(args: argparse.Namespace) -> BaselineConfig:
    config = BaselineConfig(
        out=_absolute(args.out), n=args.n, shards=args.shards, seed=args.seed, min_elements=args.min_elements,
        max_elements=args.max_elements, max_count=args.max_count, max_atoms=args.max_atoms,
        max_sites=args.max_sites, train_store=_absolute(args.train_store),
        systems_from=_absolute(args.systems_from), run_id=args.run_id,
    )
    return config


def cmd_baseline(args: argparse.Namespace) -> int:
    from matra_hpc.evaluate.stage import run_baseline
    from matra_hpc.launch.environment import context_from_environment

    config = build_baseline_config(args)
    ctx = context_from_environment()
    summary = run_baseline(config, ctx)
    if ctx.is_main:
        print(json.dumps(summary, indent=2))
    return 0


def _screen_options(pairs: list[str] | None, relax: str | None) -> dict | None:
    """``--screen-option KEY=VALUE`` (fields of the screen stage's config) and ``--relax``."""
    if not pairs and relax is None:
        return None
    options: dict = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--screen-option {pair!r} is not KEY=VALUE")
        options[key.strip().replace("-", "_")] = _literal(value.strip())
    if relax is not None:
        options["relax"] = relax
    return options


def _literal(text: str):
    """Numbers and true/false/none as such, anything else as the string."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def add_screen_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--relax", default=None,
                        help="relaxation protocol of the screen stage, e.g. sevennet:0.05,sevennet:0.02")
    parser.add_argument("--screen-option", action="append", default=[], metavar="KEY=VALUE",
                        help="any other field of the screen stage's config (repeatable), e.g. hull_reference=PATH")


def cmd_recovery(args: argparse.Namespace) -> int:
    from matra_hpc.evaluate.config import RecoveryConfig
    from matra_hpc.evaluate.stage import run_recovery
    from matra_hpc.generate.temperatures import parse_temperatures
    from matra_hpc.launch.environment import context_from_environment

    config = RecoveryConfig(
        system=args.system, held_out=_absolute(args.held_out), out=_absolute(args.out),
        checkpoint=_absolute(args.checkpoint), n=args.n, temperatures=tuple(parse_temperatures(args.temps)),
        shards=args.shards, seed=args.seed, batch_size=args.batch_size, stability=args.stability,
        generated=_absolute(args.generated), screened=_absolute(args.screened),
        screen=_screen_options(args.screen_option, args.relax),
    )
    ctx = context_from_environment()
    result = run_recovery(config, ctx)
    if ctx.is_main:
        print(f"{result['system']}: {result['n_recovered']} of {result['n_held_out']} held-out structures recovered "
              f"in {result['n_sampled']} sampled rows ({'relaxed' if result['relaxed'] else 'as generated'})")
        for r in result["recovered"]:
            print(f"  {r['held_out']} ({r['formula']}, group {r['spacegroup']}) at {r['at']}: {r['candidate']}")
        print(f"wrote {', '.join(result['files'])}")
    return 0


def _labelled(pairs: list[str] | None) -> dict[str, str] | None:
    if not pairs:
        return None
    out = {}
    for pair in pairs:
        label, sep, path = pair.partition("=")
        if not sep or not label or not path:
            raise UsageError(f"--screened {pair!r} is not LABEL=STORE")
        out[label] = _absolute(path)
    return out


def cmd_conditioning(args: argparse.Namespace) -> int:
    from matra_hpc.evaluate.config import ConditioningConfig
    from matra_hpc.evaluate.stage import run_conditioning
    from matra_hpc.evaluate.stats import format_proportion, format_ratio
    from matra_hpc.launch.environment import context_from_environment

    config = ConditioningConfig(
        out=_absolute(args.out), checkpoint=_absolute(args.checkpoint), n=args.n, temperature=args.temperature,
        shards=args.shards, seed=args.seed, batch_size=args.batch_size, train_store=_absolute(args.train_store),
        screen=_screen_options(args.screen_option, args.relax) or {}, screened=_labelled(args.screened),
    )
    ctx = context_from_environment()
    result = run_conditioning(config, ctx)
    if ctx.is_main:
        for row in result["conditions"]:
            parts = [f"< {k} eV/atom: {format_proportion(p)}" for k, p in row["below"].items()]
            print(f"{row['label']:>6}: {row['n_candidates']} candidates; " + "; ".join(parts))
        for label, r in result.get("ratio_to_unconditioned", {}).items():
            print(f"{label} / none at 0.1 eV/atom: {format_ratio(r)}")
        print(f"wrote {config.out}/conditioning.{{json,csv,png}}")
    return 0


def cmd_report_all(args: argparse.Namespace) -> int:
    from matra_hpc.evaluate.config import ReportAllConfig
    from matra_hpc.evaluate.stage import run_report_all
    from matra_hpc.evaluate.stats import format_ratio
    from matra_hpc.launch.environment import context_from_environment

    config = ReportAllConfig(generated=args.generated, screened=args.screened, baseline=args.baseline,
                             recovery=args.recovery, conditioning=args.conditioning, checkpoint=args.checkpoint,
                             out=args.out)
    result = run_report_all(config, context_from_environment())
    report, files = result["report"], result["files"]
    if "stable_ratio" in report:
        print(f"stable fraction (e_hull < 0.1 eV/atom) model / baseline: {format_ratio(report['stable_ratio'])}")
    print(f"wrote {files['html']}, {files['md']}, {files['json']} and {len(files['figures'])} PNGs")
    return 0


def register_report_all(kinds: argparse._SubParsersAction) -> None:
    """``report all``, registered by ``cli/report.py`` under its ``report`` command."""
    parser = kinds.add_parser("all", help="one HTML page + Markdown twin with every figure of the paper",
                              description="One self-contained HTML page and its Markdown twin: Fig. 2, Table 1, "
                                          "Fig. 3, Fig. 4, conditioning, SMACT, t-SNE; every number in JSON.")
    parser.add_argument("--generated", required=True, help="generated store of the model run")
    parser.add_argument("--screened", default=None, help="screened store of that run")
    parser.add_argument("--baseline", default=None, help="screened store of the PyXtal baseline (or its generated store)")
    parser.add_argument("--recovery", default=None, help="recovery.json of `eval recovery`")
    parser.add_argument("--conditioning", default=None, help="conditioning.json of `eval conditioning`")
    parser.add_argument("--checkpoint", default=None, help="checkpoint whose embeddings get t-SNE maps")
    parser.add_argument("--out", default=None, help="output folder (default: report/ beside the generated store)")
    parser.set_defaults(func=cmd_report_all)


def register(sub: argparse._SubParsersAction) -> None:
    baseline = sub.add_parser("baseline", help="baselines to compare a model run with (pyxtal)",
                              description="Baselines written as generated stores, so screen and reports take them.")
    kinds = baseline.add_subparsers(dest="baseline_kind", metavar="KIND")
    kinds.required = True
    pyx = kinds.add_parser("pyxtal", help="random symmetric charge-balanced crystals (paper Fig. 4 baseline)",
                           description=__doc__)
    add_baseline_arguments(pyx)
    pyx.set_defaults(func=cmd_baseline)

    ev = sub.add_parser("eval", help="conditioning effect and chemical-system recovery",
                        description="Comparisons that drive the generate and screen stages, then analyse their stores.")
    evals = ev.add_subparsers(dest="eval_kind", metavar="KIND")
    evals.required = True
    rec = evals.add_parser("recovery", help="held-out structures recovered by conditioned generation (Fig. 3)",
                           description="Sample conditioned on a held-out chemical system (or take --generated), "
                                       "optionally screen, count recovered held-out structures vs sampled rows.")
    rec.add_argument("--system", required=True, help="chemical system held out, e.g. Al-Ca-Cu")
    rec.add_argument("--held-out", required=True, help="token store prepared with --hold-out-system SYSTEM")
    rec.add_argument("--out", required=True, help="output folder (stores, recovery.{json,csv,png}); rerun to resume")
    rec.add_argument("--checkpoint", default=None, help="checkpoint to sample from")
    rec.add_argument("--n", type=int, default=2000, help="rows sampled per temperature (default %(default)s)")
    rec.add_argument("--temps", default="1.0", help="temperatures, as generate --temps (default %(default)s)")
    rec.add_argument("--shards", type=int, default=1, help="shards per temperature")
    rec.add_argument("--seed", type=int, default=0)
    rec.add_argument("--batch-size", type=int, default=256)
    rec.add_argument("--stability", choices=["low", "high"], default=None, help="also condition on stability")
    rec.add_argument("--generated", default=None, help="analyse this generated store instead of sampling")
    rec.add_argument("--screened", default=None, help="match the relaxed structures of this screened store")
    add_screen_arguments(rec)
    rec.set_defaults(func=cmd_recovery)

    cond = evals.add_parser("conditioning", help="stability=low / high / none: stable fractions with 95% intervals",
                            description="Sample stability=low, stability=high and unconditioned at one T, screen "
                                        "them, compare the fractions below 0.05 and 0.1 eV/atom.")
    cond.add_argument("--checkpoint", default=None, help="checkpoint to sample from")
    cond.add_argument("--out", required=True, help="output folder (stores, conditioning.{json,csv,png})")
    cond.add_argument("--n", type=int, default=1000, help="rows per condition (default %(default)s)")
    cond.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default %(default)s)")
    cond.add_argument("--shards", type=int, default=1)
    cond.add_argument("--seed", type=int, default=0)
    cond.add_argument("--batch-size", type=int, default=256)
    cond.add_argument("--train-store", default=None, help="token store whose structures flag dup_train")
    cond.add_argument("--screened", action="append", default=None, metavar="LABEL=STORE",
                      help="analyse existing screened stores instead (repeatable, e.g. low=s1.zarr)")
    add_screen_arguments(cond)
    cond.set_defaults(func=cmd_conditioning)


SUBMIT_STAGES = [
    SubmittableStage(
        name="baseline-pyxtal",
        kind="mpi",
        help="the charge-balanced PyXtal baseline as an MPI job (ranks share the shards)",
        add_arguments=add_baseline_arguments,
        build_config=build_baseline_config,
        config_cls=BaselineConfig,
        run="matra_hpc.evaluate.stage:run_baseline",
        default_launch={"tasks_per_node": 2},
    )
]
