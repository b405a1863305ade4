"""`matra-hpc vasp-prep`, `submit vasp`, `dft-report`, and `status` of a VASP tree."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from matra_hpc.errors import UsageError


def _quotas(text: str | None) -> dict[str, int]:
    """``T0.70=5000,T1.00=2000`` -> {"T0.70": 5000, "T1.00": 2000}."""
    quotas: dict[str, int] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, _, value = part.partition("=")
        name = name.strip()
        if not name.startswith("T"):
            name = f"T{float(name):.2f}" if name.replace(".", "", 1).isdigit() else name
        try:
            quotas[name] = int(value)
        except ValueError:
            raise UsageError(f"bad per-temperature quota {part!r}: use T0.70=5000") from None
    return quotas


def register(sub: argparse._SubParsersAction) -> None:
    prep = sub.add_parser("vasp-prep", help="write MP-compatible VASP inputs for the top candidates",
                          description="Write MPRelaxSet inputs (paper settings) for the lowest-e-hull candidates "
                                      "of a screened store. Resumable; runs under mpirun too.")
    prep.add_argument("store", help="screened store (screened.zarr)")
    prep.add_argument("--top", type=int, default=150_000, help="candidates to prepare (default 150000)")
    prep.add_argument("--out", required=True, help="the VASP tree to write (e.g. vasp/)")
    prep.add_argument("--profile", default=None, help="cluster profile: NCORE/KPAR and potcar_dir from its vasp key")
    prep.add_argument("--filters", default="relaxed,connected,novel,unique",
                      help="boolean columns a candidate needs (default: relaxed,connected,novel,unique)")
    prep.add_argument("--per-temperature", default=None, metavar="T0.70=N,...", help="cap per temperature group")
    prep.add_argument("--tie-break", default="id", choices=["id", "n_sites", "energy_per_atom"],
                      help="order among equal e_hull (default id)")
    prep.add_argument("--kpoints-per-atom", type=int, default=1000, help="k-points per reciprocal atom (1000)")
    prep.add_argument("--nsw", type=int, default=200, help="ionic steps per relaxation (200)")
    prep.add_argument("--potcar-dir", default=None,
                      help="POTCAR library (default: PMG_VASP_PSP_DIR, else the profile's vasp.potcar_dir; "
                           "none: POTCAR.spec only)")
    prep.add_argument("--workers", type=int, default=1, help="processes writing directories (per rank)")
    prep.set_defaults(func=cmd_vasp_prep)

    report = sub.add_parser("dft-report", help="collect VASP results into e-hull reports",
                            description="Parse every candidate's vasprun.xml, apply MP2020 corrections, compute "
                                        "e-hull against reference entries; writes TREE/dft-report.{json,csv,png}.")
    report.add_argument("tree", help="VASP tree written by vasp-prep")
    report.add_argument("--hull-reference", default=None,
                        help="JSON (or .json.gz) of ComputedStructureEntry: MP or Alexandria entries")
    report.add_argument("--reference-correction", default="auto", choices=["auto", "none"],
                        help="auto: apply MP2020 to reference entries that lack it (once); none: take their "
                             "energies as given")
    report.add_argument("--stable-threshold", type=float, default=0.001,
                        help="e-hull (eV/atom) at or below which a candidate goes into the CIF/extxyz bundle")
    report.add_argument("--workers", type=int, default=1, help="processes parsing vasprun.xml files")
    report.add_argument("--no-static", action="store_true",
                        help="the runs stopped after the double relaxation (submit vasp --no-static)")
    report.set_defaults(func=cmd_dft_report)


def register_submit(stage_parsers: argparse._SubParsersAction, add_launch_flags: Any, launch_overrides: Any,
                    print_statuses: Any) -> None:
    """`submit vasp`: added to `matra-hpc submit` beside the function stages (helpers passed in by jobs)."""
    parser = stage_parsers.add_parser(
        "vasp", help="run a VASP tree as Slurm job arrays under custodian",
        description="Submit the tree's candidates as job arrays (many per array task), each run under custodian: "
                    "double relaxation, then a static run. The VASP command comes from the profile's vasp.command.")
    parser.add_argument("tree", help="VASP tree written by vasp-prep")
    parser.add_argument("--per-task", type=int, default=20, help="candidates per array task (default 20)")
    parser.add_argument("--resubmit", action="store_true",
                        help="take the failed and timed-out candidates (default: only never-submitted ones)")
    parser.add_argument("--max-errors", type=int, default=5, help="custodian corrections per candidate (5)")
    parser.add_argument("--polling-s", type=float, default=10.0, help="custodian's polling interval (s)")
    parser.add_argument("--no-static", action="store_true", help="stop after the double relaxation")
    add_launch_flags(parser)
    parser.set_defaults(func=cmd_submit_vasp, launch_overrides=launch_overrides, print_statuses=print_statuses)


def _profile_vasp(profile: str | None) -> dict[str, Any]:
    if not profile:
        return {}
    from matra_hpc.launch import resolve_launch_config

    return dict(resolve_launch_config(profile, {}).vasp)


def cmd_vasp_prep(args: argparse.Namespace) -> int:
    from matra_hpc.dft import VaspPrepConfig, run_vasp_prep
    from matra_hpc.dft.inputs import default_potcar_dir
    from matra_hpc.launch import context_from_environment

    vasp = _profile_vasp(args.profile)
    filters = tuple(f.strip() for f in args.filters.split(",") if f.strip())
    config = VaspPrepConfig(
        store=args.store, out=args.out, top=args.top, filters=filters, per_temperature=_quotas(args.per_temperature),
        tie_break=args.tie_break, kpoints_per_atom=args.kpoints_per_atom, nsw=args.nsw,
        ncore=vasp.get("ncore"), kpar=vasp.get("kpar"),
        potcar_dir=args.potcar_dir or default_potcar_dir() or vasp.get("potcar_dir"), workers=args.workers,
    )
    ctx = context_from_environment()
    result = run_vasp_prep(config, ctx)
    if ctx.is_main:
        print(json.dumps(result, indent=1))
    return 0


def cmd_dft_report(args: argparse.Namespace) -> int:
    from matra_hpc.context import local_context
    from matra_hpc.dft import DftReportConfig, run_dft_report

    config = DftReportConfig(tree=args.tree, hull_reference=args.hull_reference,
                             reference_correction=args.reference_correction, static=not args.no_static,
                             stable_threshold=args.stable_threshold, workers=args.workers)
    summary = run_dft_report(config, local_context())
    refs = summary["energy"]["references"]
    if refs and refs["refused_by_mp2020"]:
        print(f"warning: MP2020 refused {refs['refused_by_mp2020']} of {refs['entries']} reference entries "
              "(no run parameters?); --reference-correction none takes them as given", file=sys.stderr)
    print(json.dumps({k: summary[k] for k in ("counts", "stable", "unknown_directories")}, indent=1))
    print(f"report: {Path(args.tree) / 'dft-report.json'}")
    return 0


class _JobStates:
    """Whether the job of a status event has ended (run states cached per run directory)."""

    def __init__(self) -> None:
        self.cache: dict[str, list[Any]] = {}

    def ended(self, event: dict[str, Any]) -> bool:
        from matra_hpc.launch import run_status

        run = event.get("run")
        if not run:
            return True
        if run not in self.cache:
            try:
                self.cache[run] = list(run_status(run))
            except UsageError:  # no manifest: the submission never got to sbatch
                self.cache[run] = []
        statuses = self.cache[run]
        job = str(event.get("job") or "")
        if job:  # the runner's events name their array task
            status = next((s for s in statuses if s.job_id in (job, job.split("_")[0])), None)
        elif len(statuses) == 1:  # the local executor: one job runs every task
            status = statuses[0]
        else:  # a submitted event: its task's position among the array tasks
            task = int(event.get("task", -1))
            status = statuses[task] if 0 <= task < len(statuses) else None
        return status is None or status.done


def cmd_submit_vasp(args: argparse.Namespace) -> int:
    from matra_hpc.dft.layout import read_tree_manifest
    from matra_hpc.dft.status import append_events, tree_states, writer_name
    from matra_hpc.dft.submit import (
        array_chunks,
        pack_tasks,
        pick_candidates,
        render_array_script,
        run_config_from_profile,
        write_tasks_file,
    )
    from matra_hpc.launch import resolve_launch_config, wait_run
    from matra_hpc.launch.arrays import DEFAULT_MAX_ARRAY_SIZE, max_array_size, submit_arrays
    from matra_hpc.launch.rundir import create_run_dir, default_run_dir

    if args.array is not None or args.after:
        raise UsageError("submit vasp packs candidates itself (--per-task) and takes no --array or --after")
    launch = resolve_launch_config(args.profile, args.launch_overrides(args))
    run_config = run_config_from_profile(launch.vasp, max_errors=args.max_errors, polling_s=args.polling_s,
                                         static=not args.no_static)
    tree = Path(args.tree)
    manifest = read_tree_manifest(tree)
    states = tree_states(manifest)
    entries = pick_candidates(manifest, states, resubmit=args.resubmit, job_ended=_JobStates().ended)
    if not entries:
        hint = "" if args.resubmit else " (use --resubmit for failed and timed-out ones)"
        raise UsageError(f"nothing to submit in {tree}: no candidate waits for a run{hint}")
    tasks = pack_tasks(entries, args.per_task)
    run_path = create_run_dir(Path(args.run_dir) if args.run_dir else default_run_dir("vasp"))
    tasks_file = write_tasks_file(run_path, tree, manifest, run_config, tasks)
    slurm = launch.cluster == "slurm"
    limit = max_array_size() if slurm else DEFAULT_MAX_ARRAY_SIZE
    scripts = []
    for k, (offset, count) in enumerate(array_chunks(len(tasks), limit)):
        script = run_path / f"vasp-array-{k}.sh"
        script.write_text(render_array_script(
            launch.to_dict(), tasks_file=str(tasks_file.resolve()), offset=offset, count=count,
            log_dir=str((run_path / "logs").resolve()), job_name="matra-vasp", python=launch.python or sys.executable,
            slurm=slurm))
        scripts.append((script, count))
    # logged before sbatch: a job that starts at once must find its candidates already "submitted"
    # (a later "submitted" would hide its "running"); the task index finds the array task later
    events = [{"id": e["id"], "status": "submitted", "dir": e["dir"], "run": str(run_path.resolve()),
               "task": i // args.per_task} for i, e in enumerate(entries)]
    append_events(manifest["source"]["path"], writer_name("submit", run_path.name), events, plan=manifest["plan_hash"])
    submit_arrays(run_path, scripts, launch, stage="vasp",
                  config={"tree": str(tree.resolve()), "tasks_file": str(tasks_file), "tasks": len(tasks),
                          "candidates": len(entries), "resubmit": args.resubmit, "max_array_size": limit},
                  command_line=["matra-hpc", *sys.argv[1:]])
    print(f"run directory: {run_path}")
    print(f"{len(entries)} candidate(s) in {len(tasks)} array task(s), {len(scripts)} array job(s)")
    wait = args.wait if args.wait is not None else not slurm
    if wait:
        args.print_statuses(wait_run(run_path))
        return print_tree_status(tree)
    return 0


def print_tree_status(tree: str | Path) -> int:
    """Per-candidate states of a VASP tree (`matra-hpc status TREE`); exit 1 when one failed."""
    from matra_hpc.dft.layout import read_tree_manifest
    from matra_hpc.dft.status import tree_states

    manifest = read_tree_manifest(tree)
    states = tree_states(manifest)
    counts: dict[str, int] = {}
    print(f"{'STATE':<10} {'REASON':<24} {'ID':<40} DIR")
    for entry in manifest["candidates"]:
        event = states[entry["id"]]
        status = event.get("status", "prepped")
        counts[status] = counts.get(status, 0) + 1
        print(f"{status:<10} {event.get('reason', '') or '-':<24} {entry['id']:<40} {entry['dir']}")
    print("totals: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 1 if counts.get("failed") else 0
