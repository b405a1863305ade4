"""Per-candidate DFT states, appended to the screened store's status log (contract J).

The DFT stage writes ``stage: dft`` events to ``<screened store>/status/dft-<writer>.jsonl``
(one file per writing process, append-only): ``prepped``, ``submitted``, ``running``,
``converged``, ``failed`` (with a reason from :data:`FAIL_REASONS` and a message). ``time`` is in
whole seconds, as the screen stage writes it, so the store's ``read_status`` puts a dft event
after a screen event of the same second; ``time_us`` adds microseconds, by which
:func:`dft_states` orders a candidate's dft events when several land in one second. A candidate of the tree
with no dft event yet counts as ``prepped`` (vasp-prep killed between its rename and its log line).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

STATES = ("prepped", "submitted", "running", "converged", "failed")
FAIL_REASONS = (
    "unconverged_electronic",  # the final run's last SCF did not reach EDIFF
    "unconverged_ionic",  # the relaxation hit NSW before forces fell below EDIFFG
    "vasp_error",  # custodian gave up: an error no handler could fix, or too many corrections
    "validation_failed",  # VASP ended without a complete vasprun.xml (VasprunXMLValidator)
    "nonzero_exit",  # VASP exited with an error code and no handler recognised why
    "no_potcar",  # the POTCAR could not be built from POTCAR.spec
    "job_ended",  # the Slurm task ended (time limit, cancel, node failure) while the candidate ran
    "runner_error",  # the runner itself raised (message says what)
)
ACTIVE = ("submitted", "running")


def utc_now() -> tuple[str, str]:
    """(whole seconds, microseconds) of now, UTC, ISO 8601."""
    now = dt.datetime.now(dt.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%SZ"), now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def writer_name(*parts: object) -> str:
    """``dft-<parts>``: a status file name safe for any job id or host."""
    text = "-".join(str(p) for p in parts if p is not None and str(p) != "")
    return "dft-" + re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def append_events(store: str | Path, writer: str, events: list[dict[str, Any]], *, plan: str) -> None:
    """Append dft events (each needs id and status) through the screened store's own writer.

    ``plan`` (the tree's ``plan_hash``) marks which VASP tree an event belongs to: two trees
    prepared from one store with other settings share ids but not states.
    """
    from matra_hpc.screen.store import append_status

    if not events:
        return
    for event in events:
        if event.get("status") not in STATES:
            raise ValueError(f"unknown dft state {event.get('status')!r}; valid: {', '.join(STATES)}")
        if event["status"] == "failed" and event.get("reason") not in FAIL_REASONS:
            raise ValueError(f"unknown dft failure reason {event.get('reason')!r}")
    seconds, micro = utc_now()
    stamped = [{"stage": "dft", "time": seconds, "time_us": micro, "plan": plan, **event} for event in events]
    append_status(store, writer, stamped)


def dft_states(store: str | Path, ids: list[str] | None = None, plan: str | None = None) -> dict[str, dict[str, Any]]:
    """The latest dft event per candidate id (by time, then file and line), from every dft log.

    With ``plan``, only the events of that tree count.
    """
    status_dir = Path(store) / "status"
    wanted = set(ids) if ids is not None else None
    latest: dict[str, tuple[tuple, dict[str, Any]]] = {}
    if not status_dir.is_dir():
        return {}
    for f_index, path in enumerate(sorted(status_dir.glob("dft-*.jsonl"))):
        with open(path) as handle:
            for line_no, line in enumerate(handle):
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line of a killed writer
                if not isinstance(event, dict) or event.get("stage") != "dft" or "id" not in event:
                    continue
                if wanted is not None and event["id"] not in wanted:
                    continue
                if plan is not None and event.get("plan") != plan:
                    continue
                key = (str(event.get("time_us") or event.get("time", "")), f_index, line_no)
                old = latest.get(event["id"])
                if old is None or key >= old[0]:
                    latest[event["id"]] = (key, event)
    return {cid: event for cid, (_key, event) in latest.items()}


def tree_states(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every candidate of a tree with its current dft event (``prepped`` when it has none)."""
    store = manifest["source"]["path"]
    ids = [c["id"] for c in manifest["candidates"]]
    states = dft_states(store, ids, plan=manifest["plan_hash"])
    return {cid: states.get(cid, {"id": cid, "stage": "dft", "status": "prepped", "reason": ""}) for cid in ids}
