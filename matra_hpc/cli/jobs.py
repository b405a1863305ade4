"""`matra-hpc submit`, `status` and `cancel`: stages as jobs through ``matra_hpc.launch``."""

from __future__ import annotations

import argparse
import importlib
import sys

from matra_hpc.errors import UsageError
from matra_hpc.launch.stages import SubmittableStage

LAUNCH_FLAGS = [
    # (flag, launch setting, type, help)
    ("--cluster", "cluster", str, "executor: local (default) or slurm"),
    ("--partition", "partition", str, "Slurm partition"),
    ("--account", "account", str, "Slurm account"),
    ("--qos", "qos", str, "Slurm quality of service"),
    ("--nodes", "nodes", int, "nodes (torchrun and MPI jobs)"),
    ("--gpus-per-node", "gpus_per_node", int, "GPUs per node (0: CPU job)"),
    ("--ntasks-per-node", "tasks_per_node", int, "MPI ranks per node; torchrun processes without GPUs"),
    ("--cpus-per-task", "cpus_per_task", int, "CPUs per process"),
    ("--mem", "mem", str, "memory per node, e.g. 8G"),
    ("--time", "time", str, "time limit: minutes, HH:MM:SS or D-HH:MM"),
    ("--array-parallelism", "array_parallelism", int, "array tasks running at once (%%N)"),
    ("--signal-delay", "signal_delay_s", int, "seconds before the time limit to checkpoint and requeue"),
]


def smoke_stages() -> list[SubmittableStage]:
    """The launch layer's own stages: small real jobs of each kind."""
    from matra_hpc.launch import smoke

    def add_smoke(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--steps", type=int, default=1, help="steps to do (progress saved after each)")
        parser.add_argument("--step-seconds", type=float, default=0.0, help="seconds per step")
        parser.add_argument("--fail", action="store_true", help="raise after the steps (shows error reporting)")
        parser.add_argument("--out", default=None, help="where records go (default RUN_DIR/smoke)")

    def add_mpi(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--steps", type=int, default=0, help="checkpointed steps before the exchange")
        parser.add_argument("--step-seconds", type=float, default=0.0, help="seconds per step")
        add_out(parser)

    def add_out(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--out", default=None, help="where records go (default RUN_DIR/smoke)")

    return [
        SubmittableStage(
            name="smoke",
            kind="function",
            help="record host/rank of a function job or array task (launch-layer check)",
            add_arguments=add_smoke,
            build_config=lambda a: smoke.SmokeConfig(
                steps=a.steps, step_seconds=a.step_seconds, fail=a.fail, out=a.out
            ),
            config_cls=smoke.SmokeConfig,
            run="matra_hpc.launch.smoke:run_smoke",
        ),
        SubmittableStage(
            name="smoke-mpi",
            kind="mpi",
            help="MPI ranks exchange data with mpi4py (launch-layer check)",
            add_arguments=add_mpi,
            build_config=lambda a: smoke.MpiSmokeConfig(steps=a.steps, step_seconds=a.step_seconds, out=a.out),
            config_cls=smoke.MpiSmokeConfig,
            run="matra_hpc.launch.smoke:run_smoke_mpi",
        ),
        SubmittableStage(
            name="smoke-ddp",
            kind="torchrun",
            help="one DDP step under torchrun, gloo on CPU (launch-layer check)",
            add_arguments=add_out,
            build_config=lambda a: smoke.DdpSmokeConfig(out=a.out),
            config_cls=smoke.DdpSmokeConfig,
            run="matra_hpc.launch.smoke:run_smoke_ddp",
        ),
    ]


def submittable_stages() -> list[SubmittableStage]:
    """Every command module's ``SUBMIT_STAGES`` (a module without one has none), then smoke."""
    from matra_hpc.cli import GROUP_MODULES

    stages: list[SubmittableStage] = []
    for name in GROUP_MODULES:
        if name == "jobs":
            continue
        module = importlib.import_module(f"matra_hpc.cli.{name}")
        stages += list(getattr(module, "SUBMIT_STAGES", []))
    return stages + smoke_stages()


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("launch options (flags > --profile > defaults)")
    group.add_argument("--profile", default=None, help="cluster profile: jobs/clusters/NAME.yaml or a path")
    for flag, dest, kind, help_text in LAUNCH_FLAGS:
        group.add_argument(flag, dest=f"launch_{dest}", type=kind, default=None, help=help_text)
    group.add_argument("--array", type=int, default=None, help="run N independent shards as a job array")
    group.add_argument("--run-dir", default=None, help="run directory (default runs/<UTC time>-<stage>)")
    group.add_argument("--after", action="append", default=[], metavar="RUN_DIR",
                       help="start only after every job of RUN_DIR succeeded (repeatable)")
    group.add_argument("--wait", action=argparse.BooleanOptionalAction, default=None,
                       help="wait for the jobs to end (default: wait locally, return at once on Slurm)")


def register(sub: argparse._SubParsersAction) -> None:
    submit = sub.add_parser("submit", help="run a stage as jobs (local executor or Slurm)",
                            description="Run a stage as jobs through the launch layer.")
    stage_parsers = submit.add_subparsers(dest="stage", metavar="STAGE")
    stage_parsers.required = True
    for stage in submittable_stages():
        parser = stage_parsers.add_parser(stage.name, help=stage.help, description=stage.help)
        stage.add_arguments(parser)
        add_launch_arguments(parser)
        parser.set_defaults(func=cmd_submit, submittable=stage)
    # programs run as job arrays from templates (not SubmittableStage functions)
    importlib.import_module("matra_hpc.cli.dft").register_submit(
        stage_parsers, add_launch_arguments, launch_overrides, _print_statuses)

    status = sub.add_parser("status", help="show every job of a run directory, or the candidates of a VASP tree")
    status.add_argument("run_dir", help="run directory, or a VASP tree from vasp-prep (per-candidate states)")
    status.set_defaults(func=cmd_status)

    cancel = sub.add_parser("cancel", help="stop every job of a run directory")
    cancel.add_argument("run_dir")
    cancel.add_argument("--grace", type=float, default=15.0,
                        help="local jobs: seconds to stop after SIGINT before SIGKILL (default %(default)s)")
    cancel.set_defaults(func=cmd_cancel)


def launch_overrides(args: argparse.Namespace) -> dict:
    """The launch settings given as flags (None where not given)."""
    return {dest: getattr(args, f"launch_{dest}") for _, dest, _, _ in LAUNCH_FLAGS}


def cmd_submit(args: argparse.Namespace) -> int:
    from matra_hpc.launch import resolve_launch_config, submit_stage, wait_run

    stage: SubmittableStage = args.submittable
    overrides = launch_overrides(args)
    launch = resolve_launch_config(args.profile, overrides, stage.default_launch)
    config = stage.build_config(args)
    run_dir = submit_stage(
        stage, config, launch, run_dir=args.run_dir, array=args.array, after=args.after,
        command_line=["matra-hpc", *sys.argv[1:]],
    )
    print(f"run directory: {run_dir}")
    wait = args.wait if args.wait is not None else launch.cluster == "local"
    if not wait:
        from matra_hpc.launch import run_status

        _print_statuses(run_status(run_dir))
        return 0
    statuses = wait_run(run_dir)
    return _print_statuses(statuses)


def cmd_status(args: argparse.Namespace) -> int:
    from matra_hpc.dft.layout import is_tree
    from matra_hpc.launch import read_manifest, run_status

    if is_tree(args.run_dir):
        from matra_hpc.cli.dft import print_tree_status

        return print_tree_status(args.run_dir)

    manifest = read_manifest(args.run_dir)
    print(f"run {args.run_dir}: stage {manifest['stage']} ({manifest['kind']}) on {manifest['launch']['cluster']}")
    return _print_statuses(run_status(args.run_dir))


def cmd_cancel(args: argparse.Namespace) -> int:
    from matra_hpc.launch import cancel_run

    cancelled = cancel_run(args.run_dir, grace_s=args.grace)
    if cancelled:
        print(f"cancelled {len(cancelled)} job(s): {' '.join(cancelled)}")
    else:
        print("nothing to cancel: every job of the run has ended")
    return 0


def _print_statuses(statuses: list) -> int:
    """A table of the jobs; the error and log of each failed job. Exit 1 when one failed."""
    print(f"{'JOB':<14} {'STATE':<12} {'TRIES':>5}  {'START':<20} {'END':<20}")
    for s in statuses:
        print(f"{s.job_id:<14} {s.state:<12} {s.attempts:>5}  {s.started or '-':<20} {s.ended or '-':<20}")
    failed = [s for s in statuses if s.done and s.state != "COMPLETED"]
    for s in failed:
        print(f"\njob {s.job_id} {s.state}; log: {s.stderr}", file=sys.stderr)
        if s.error:
            print(s.error.rstrip(), file=sys.stderr)
    if failed:
        return 1
    if not statuses:
        raise UsageError("the run has no jobs")
    return 0
