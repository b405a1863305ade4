"""``report screen``: Table 1 and Fig. 4 of the paper from a screened store, as JSON, CSV and PNG.

Per temperature, nested ``counts`` (each a subset of the one before, except the e-hull counts):

- ``n_generated``: every sampled row of that temperature in the store;
- ``n_screened``: decoded, bonds ok and not a training duplicate (what generation let through);
- ``n_relaxed``: relaxation passed every guard (status ``screened`` or ``rejected``);
- ``n_connected``: relaxed and one component in the bond graph;
- ``n_novel``: connected and not in the novelty index;
- ``n_unique``: novel and not a duplicate of an earlier candidate of the run;
- ``n_below_0.001``, ``n_below_0.050``, ``n_below_0.100``: among the novel and unique, e_hull
  below that many eV/atom (as the paper counts).

Fig. 4 (right panel): the e-hull distribution of the novel and unique candidates, next to the
same distribution of a screened baseline store (``--baseline``, e.g. the PyXtal baseline run
through the same screening) when one is given.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from matra_hpc.errors import StoreError
from matra_hpc.generate.temperatures import temperature_group
from matra_hpc.screen import store as sstore

THRESHOLDS = (0.001, 0.050, 0.100)
COUNT_KEYS = ["n_generated", "n_screened", "n_relaxed", "n_connected", "n_novel", "n_unique",
              *[f"n_below_{x:.3f}" for x in THRESHOLDS]]
GENERATION_FILTERS = ("not_decoded", "not_screened_bonds", "not_screened_dup_train")


@dataclass
class ReportFiles:
    json: Path
    csv: Path
    png: Path


def table_counts(data: dict[str, np.ndarray]) -> tuple[dict[str, int], np.ndarray]:
    """Table 1 counts of one temperature's columns, and the e-hulls of its novel unique rows."""
    status = np.asarray(data["status"], dtype=object)
    reason = np.asarray(data["reason"], dtype=object)
    screened = ~np.isin(reason, GENERATION_FILTERS)
    relaxed = np.isin(status, ("screened", "rejected"))
    connected = relaxed & np.asarray(data["connected"], bool)
    novel = connected & np.asarray(data["novel"], bool)
    unique = novel & np.asarray(data["unique"], bool)
    e_hull = np.asarray(data["e_hull"], dtype=float)
    counts = {"n_generated": int(len(status)), "n_screened": int(screened.sum()), "n_relaxed": int(relaxed.sum()),
              "n_connected": int(connected.sum()), "n_novel": int(novel.sum()), "n_unique": int(unique.sum())}
    finite = unique & np.isfinite(e_hull)
    for x in THRESHOLDS:
        counts[f"n_below_{x:.3f}"] = int((finite & (e_hull < x)).sum())
    return counts, e_hull[finite]


def build_report(store: str | Path, baseline: str | Path | None = None) -> dict[str, Any]:
    """The report of a screened store (its consolidated views must exist)."""
    store = Path(store)
    root = sstore.open_root(store)
    temperatures = sstore.store_temperatures(store)
    shards_total = int(root.attrs["shards"])
    rows, all_e = [], []
    for t in temperatures:
        try:
            data = sstore.read_view(store, t)
        except StoreError:
            raise StoreError(f"{store} is not consolidated yet: rerun the screening to finish it") from None
        counts, e_hull = table_counts(data)
        reasons = Counter(str(r) for r in data["reason"] if r)
        shards = sstore.finished_shards(store, t)
        seconds = sum(float(sstore.read_manifest(store, t, s).get("seconds", 0.0)) for s in shards)
        rows.append({"temperature": t, "group": temperature_group(t), "counts": counts,
                     "reasons": dict(sorted(reasons.items())), "shards_done": len(shards),
                     "shards_total": shards_total, "task_seconds": round(seconds, 3),
                     "e_hull_novel_unique": _summary(e_hull)})
        all_e.append(e_hull)
    total = {k: sum(r["counts"][k] for r in rows) for k in COUNT_KEYS}
    report = {
        "store": str(store.resolve()),
        "run_id": root.attrs.get("run_id"),
        "relax": root.attrs.get("relax"),
        "energy": root.attrs.get("energy"),
        "novelty_index": root.attrs.get("novelty_index"),
        "complete": all(r["shards_done"] == shards_total for r in rows),
        "temperatures": rows,
        "total": total,
        "e_hull_novel_unique": _summary(np.concatenate(all_e) if all_e else np.zeros(0)),
        "baseline": None,
    }
    if baseline is not None:
        b_rows = [table_counts(sstore.read_view(baseline, t)) for t in sstore.store_temperatures(baseline)]
        e = np.concatenate([x[1] for x in b_rows]) if b_rows else np.zeros(0)
        report["baseline"] = {"store": str(Path(baseline).resolve()),
                              "run_id": sstore.open_root(baseline).attrs.get("run_id"),
                              "total": {k: sum(c[k] for c, _e in b_rows) for k in COUNT_KEYS},
                              "e_hull_novel_unique": _summary(e)}
    return report


def _summary(e: np.ndarray) -> dict[str, Any]:
    """Distribution summary plus the sorted values (the figure redraws from the JSON alone)."""
    e = np.sort(np.asarray(e, dtype=float))
    if not len(e):
        return {"n": 0, "median": None, "q25": None, "q75": None, "values": []}
    return {"n": int(len(e)), "median": float(np.median(e)), "q25": float(np.percentile(e, 25)),
            "q75": float(np.percentile(e, 75)), "values": [round(float(x), 5) for x in e]}


def default_prefix(store: str | Path) -> Path:
    store = Path(store).resolve()
    return store.with_name(store.name.removesuffix(".zarr") + ".report")


def write_report(report: dict[str, Any], prefix: str | Path) -> ReportFiles:
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(Path(f"{prefix}.json"), Path(f"{prefix}.csv"), Path(f"{prefix}.png"))
    files.json.write_text(json.dumps(report, indent=2) + "\n")
    with open(files.csv, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["temperature", *COUNT_KEYS, "shards_done", "shards_total", "task_seconds"])
        for r in report["temperatures"]:
            writer.writerow([r["temperature"], *[r["counts"][k] for k in COUNT_KEYS], r["shards_done"],
                             r["shards_total"], r["task_seconds"]])
        writer.writerow(["all", *[report["total"][k] for k in COUNT_KEYS], "", "", ""])
    plot_report(report, files.png)
    return files


def plot_report(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["temperatures"]
    temps = np.array([r["temperature"] for r in rows])
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120)
    for key, marker in zip(COUNT_KEYS, "os^vDxP*h", strict=False):
        left.plot(temps, [r["counts"][key] for r in rows], marker=marker, label=key.removeprefix("n_"))
    left.set_xlabel("sampling temperature T")
    left.set_ylabel("candidates")
    left.set_yscale("symlog", linthresh=1)
    left.grid(alpha=0.3)
    left.legend(fontsize=7, loc="best")
    left.set_title("Table 1: screening funnel per temperature", fontsize=9)

    ours = np.asarray(report["e_hull_novel_unique"]["values"], dtype=float)
    base = np.asarray((report.get("baseline") or {}).get("e_hull_novel_unique", {}).get("values", []), dtype=float)
    both = np.concatenate([ours, base])
    if len(both):
        lo, hi = float(min(both.min(), 0.0)), float(max(both.max(), 0.1))
        bins = np.linspace(lo, hi, 30)
        right.hist(ours, bins=bins, alpha=0.6, density=len(base) > 0, label=f"generated ({len(ours)})")
        if len(base):
            right.hist(base, bins=bins, alpha=0.6, density=True, label=f"baseline ({len(base)})")
    for x in THRESHOLDS:
        right.axvline(x, color="grey", lw=0.8, ls="--")
    right.set_xlabel("ML e-hull (eV/atom)")
    right.set_ylabel("density" if len(base) else "candidates")
    right.set_title("Fig. 4: e-hull of novel, unique candidates", fontsize=9)
    if right.get_legend_handles_labels()[0]:
        right.legend(fontsize=8)
    else:
        right.text(0.5, 0.5, "no novel, unique candidate with an e-hull", ha="center", va="center",
                   transform=right.transAxes, fontsize=8)
    title = f"{report.get('run_id') or ''}"
    if not report["complete"]:
        title += " (incomplete run)"
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def format_table(report: dict[str, Any]) -> str:
    names = ["gen", "scr", "relax", "conn", "novel", "uniq", "<1meV", "<50meV", "<100meV"]
    lines = [f"{'T':>5} " + " ".join(f"{n:>7}" for n in names)]
    for r in report["temperatures"]:
        lines.append(f"{r['temperature']:5.2f} " + " ".join(f"{r['counts'][k]:7d}" for k in COUNT_KEYS))
    lines.append(f"{'all':>5} " + " ".join(f"{report['total'][k]:7d}" for k in COUNT_KEYS))
    return "\n".join(lines)
