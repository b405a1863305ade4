"""One array task of ``submit vasp``: its candidates, one after another, each under custodian.

``python -m matra_hpc.dft.runner TASKS.json INDEX --job JOB`` (the job script passes the array
index and job id; this module reads no scheduler variable). Per candidate, as MP runs VASP:
custodian's double relaxation (the second restarts from the first's CONTCAR, same EDIFFG), then
a static total-energy run from the relaxed structure; custodian's standard VASP handlers fix
what they recognise, and ``VasprunXMLValidator`` makes a run without a complete vasprun.xml a
failure instead of a success. Every step is an event in the screened store's status log:
``running`` when it starts, then ``converged`` or ``failed`` with a reason (see
:mod:`matra_hpc.dft.status`). A SIGTERM (time limit, scancel) records ``failed: job_ended`` for
the candidate in flight, so ``submit vasp --resubmit`` finds it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

from matra_hpc.dft.config import VaspRunConfig
from matra_hpc.dft.inputs import PotcarError, build_potcar
from matra_hpc.dft.layout import CANDIDATE_FILE, id_from_name, read_json
from matra_hpc.dft.outputs import assess
from matra_hpc.dft.status import append_events, writer_name

log = logging.getLogger("matra_hpc.dft.runner")

INPUTS = ("INCAR", "KPOINTS", "POSCAR", "POTCAR")
KEEP = set(INPUTS) | {"POTCAR.spec", CANDIDATE_FILE, "attempts"}
TASKS_FILE = "vasp-tasks.json"
# custodian's jobs of the candidate in flight: a SIGTERM stops their VASP (its own session) too
_ACTIVE_JOBS: list[Any] = []


def handlers() -> list[Any]:
    """custodian's standard VASP handlers, as MP's workflows use them."""
    from custodian.vasp.handlers import (
        FrozenJobErrorHandler,
        IncorrectSmearingHandler,
        LargeSigmaHandler,
        MeshSymmetryErrorHandler,
        NonConvergingErrorHandler,
        PositiveEnergyErrorHandler,
        PotimErrorHandler,
        StdErrHandler,
        UnconvergedErrorHandler,
        VaspErrorHandler,
    )

    return [
        VaspErrorHandler(),
        MeshSymmetryErrorHandler(),
        UnconvergedErrorHandler(),
        NonConvergingErrorHandler(),
        PotimErrorHandler(),
        PositiveEnergyErrorHandler(),
        FrozenJobErrorHandler(),
        StdErrHandler(),
        LargeSigmaHandler(),
        IncorrectSmearingHandler(),
    ]


def validators() -> list[Any]:
    from custodian.vasp.validators import VaspFilesValidator, VasprunXMLValidator

    return [VasprunXMLValidator(), VaspFilesValidator()]


def vasp_jobs(config: VaspRunConfig, ediffg: float) -> list[Any]:
    """Relax, relax again from the first CONTCAR, then a static run from the second (MP's chain)."""
    from custodian.vasp.jobs import VaspJob

    cmd = shlex.split(config.vasp_command)
    gamma = shlex.split(config.gamma_command) if config.gamma_command else None
    common = {"auto_npar": False, "gamma_vasp_cmd": gamma, "auto_gamma": gamma is not None}
    relax1 = VaspJob(cmd, final=False, suffix=".relax1", **common)
    relax2 = VaspJob(
        cmd, final=not config.static, backup=False, suffix=".relax2",
        settings_override=[
            {"dict": "INCAR", "action": {"_set": {"ISTART": 1, "EDIFFG": ediffg}}},
            {"file": "CONTCAR", "action": {"_file_copy": {"dest": "POSCAR"}}},
        ],
        **common,
    )
    if not config.static:
        return [relax1, relax2]
    static = VaspJob(
        cmd, final=True, backup=False, suffix=".static",
        settings_override=[
            {"dict": "INCAR", "action": {"_set": {"NSW": 0, "IBRION": -1, "ISTART": 0}}},
            {"file": "CONTCAR", "action": {"_file_copy": {"dest": "POSCAR"}}},
        ],
        **common,
    )
    return [relax1, relax2, static]


def reset_directory(directory: Path) -> int:
    """Move a previous attempt's outputs to ``attempts/<n>/`` and restore the prepared inputs.

    Returns the attempt number about to run (1 for a fresh directory).
    """
    leftovers = [p for p in directory.iterdir() if p.name not in KEEP]
    attempts = directory / "attempts"
    previous = len([p for p in attempts.iterdir()]) if attempts.is_dir() else 0
    if not leftovers:
        return previous + 1
    target = attempts / f"{previous + 1}"
    target.mkdir(parents=True)
    for path in leftovers:
        if path.name.endswith(".orig") and path.name[:-5] in INPUTS:
            shutil.copy2(path, target / path.name)
            os.replace(path, directory / path.name[:-5])  # custodian's backup of the pristine input
        else:
            shutil.move(str(path), target / path.name)
    return previous + 2


def gzip_outputs(directory: Path) -> None:
    """gzip what VASP and custodian wrote (custodian's own gzip would also pack the inputs)."""
    import gzip

    for path in directory.iterdir():
        name = path.name
        if (not path.is_file() or name in KEEP or name.startswith(".") or name.endswith((".gz", ".orig"))):
            continue
        tmp = path.with_name(f".{name}.gz.partial")
        with open(path, "rb") as fin, gzip.open(tmp, "wb", compresslevel=6) as fout:
            shutil.copyfileobj(fin, fout)
        os.replace(tmp, path.with_name(name + ".gz"))
        path.unlink()


def _failure(exc: Exception) -> tuple[str, str]:
    from custodian.custodian import (
        MaxCorrectionsError,
        MaxCorrectionsPerHandlerError,
        MaxCorrectionsPerJobError,
        NonRecoverableError,
        ReturnCodeError,
        ValidationError,
    )

    if isinstance(exc, ValidationError):
        return "validation_failed", str(exc)
    if isinstance(exc, ReturnCodeError):
        return "nonzero_exit", str(exc)
    if isinstance(exc, MaxCorrectionsError | MaxCorrectionsPerJobError | MaxCorrectionsPerHandlerError
                  | NonRecoverableError):
        return "vasp_error", str(exc)
    return "runner_error", f"{type(exc).__name__}: {exc}"


def corrections(directory: Path) -> list[dict[str, Any]]:
    """custodian's log of errors and the actions taken (custodian.json), compacted."""
    path = next((p for p in (directory / "custodian.json", directory / "custodian.json.gz") if p.is_file()), None)
    if path is None:
        return []
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt") as handle:
            log_data = json.load(handle)
    except (OSError, json.JSONDecodeError):
        return []
    out = []
    for job in log_data:
        suffix = job.get("job", {}).get("suffix", "")
        for corr in job.get("corrections", []):
            handler = corr.get("handler", {})
            name = handler.get("@class", str(handler)) if isinstance(handler, dict) else str(handler)
            out.append({"run": suffix.lstrip("."), "handler": name, "errors": corr.get("errors", []),
                        "actions": corr.get("actions", [])})
    return out


def run_candidate(directory: Path, config: VaspRunConfig) -> dict[str, Any]:
    """Run one candidate under custodian; returns its final event (converged or failed)."""
    from custodian import Custodian
    from pymatgen.io.vasp.inputs import Incar

    attempt = reset_directory(directory)
    event: dict[str, Any] = {"attempt": attempt}
    if not (directory / "POTCAR").is_file():
        if config.potcar_dir:
            try:
                build_potcar(directory, config.potcar_dir)
            except PotcarError as exc:
                return {**event, "status": "failed", "reason": "no_potcar", "message": str(exc)}
        else:
            log.warning("%s: no POTCAR and no vasp.potcar_dir; VASP gets POTCAR.spec only", directory)
    ediffg = float(Incar.from_file(str(directory / "INCAR")).get("EDIFFG", -0.005))
    jobs = vasp_jobs(config, ediffg)
    _ACTIVE_JOBS[:] = jobs
    custodian = Custodian(
        handlers(), jobs, validators=validators(), max_errors=config.max_errors,
        polling_time_step=config.polling_s, monitor_freq=config.monitor_freq,
        gzipped_output=False, directory=str(directory),
    )
    try:
        custodian.run()
    except Exception as exc:  # custodian's errors and anything else: a reason, never a dead task
        reason, message = _failure(exc)
        if reason == "runner_error":
            message += "\n" + traceback.format_exc(limit=5)
        if not (directory / "POTCAR").is_file() and reason in ("validation_failed", "nonzero_exit"):
            message += " (no POTCAR was available: set vasp.potcar_dir in the profile)"
        if reason == "vasp_error":
            # custodian ran out of corrections: say what the last run shows when it is unconverged
            verdict = assess(directory, static=config.static)
            if verdict.reason.startswith("unconverged"):
                reason, message = verdict.reason, f"{verdict.message}; custodian: {message}"
        if config.gzip_output:
            gzip_outputs(directory)
        return {**event, "status": "failed", "reason": reason, "message": message,
                "corrections": corrections(directory)}
    if config.gzip_output:
        gzip_outputs(directory)
    verdict = assess(directory, static=config.static)
    fixes = corrections(directory)
    if verdict.state == "converged":
        return {**event, "status": "converged", "final": verdict.final.name if verdict.final else None,
                "corrections": fixes}
    return {**event, "status": "failed", "reason": verdict.reason, "message": verdict.message,
            "corrections": fixes}


def run_task(tasks_file: str | Path, index: int, job: str | None = None) -> int:
    """Run every candidate of task ``index``; returns how many failed."""
    spec = read_json(Path(tasks_file))
    config = VaspRunConfig(**spec["config"])
    config.validate()
    tree = Path(spec["tree"])
    store = spec["store"]
    plan = spec["plan"]
    dirs = spec["tasks"][index]
    writer = writer_name("run", job or f"pid{os.getpid()}", f"t{index}")
    run_dir = str(Path(tasks_file).resolve().parent)
    current: dict[str, Any] = {}

    def on_term(signum: int, _frame: Any) -> None:
        for vasp_job in _ACTIVE_JOBS:
            process = getattr(vasp_job, "_vasp_process", None)
            if process is not None and process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        if current:
            append_events(store, writer, [{"id": current["id"], "status": "failed", "reason": "job_ended",
                                           "message": f"signal {signum} (time limit or cancel) during the run",
                                           "run": run_dir, "job": job}], plan=plan)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    failed = 0
    for rel in dirs:
        directory = tree / rel
        try:
            cid = read_json(directory / CANDIDATE_FILE)["id"]
        except (OSError, ValueError, KeyError, TypeError):
            # a folder damaged since vasp-prep: record it by the id its name encodes, run the rest
            cid = id_from_name(Path(rel).name)
            append_events(store, writer, [{"id": cid, "status": "failed", "reason": "runner_error", "dir": rel,
                                           "message": f"{directory / CANDIDATE_FILE} is missing or unreadable",
                                           "run": run_dir, "job": job}], plan=plan)
            failed += 1
            continue
        current.update(id=cid)
        append_events(store, writer, [{"id": cid, "status": "running", "dir": rel, "run": run_dir, "job": job}], plan=plan)
        try:
            event = run_candidate(directory, config)
        except Exception as exc:  # keep going: the next candidates of the task are independent
            event = {"status": "failed", "reason": "runner_error", "message": f"{type(exc).__name__}: {exc}"}
        current.clear()
        failed += event["status"] != "converged"
        append_events(store, writer, [{"id": cid, "dir": rel, "run": run_dir, "job": job, **event}], plan=plan)
        print(f"[matra-hpc] {cid}: {event['status']} {event.get('reason', '')}".rstrip(), flush=True)
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m matra_hpc.dft.runner", description=__doc__.splitlines()[0])
    parser.add_argument("tasks_file")
    parser.add_argument("index", type=int)
    parser.add_argument("--job", default=None, help="job id, recorded in the status events")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_task(args.tasks_file, args.index, args.job)
    # failed candidates are data (events with reasons), not a failed task: the task succeeded
    return 0


if __name__ == "__main__":
    sys.exit(main())
