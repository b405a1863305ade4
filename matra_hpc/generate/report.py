"""``report generate``: the per-temperature table of paper Fig. 2, as JSON, CSV and a PNG plot.

Every fraction is over the rows *sampled* at that temperature, so sequences cut by the length
guard count as invalid (never dropped): ``valid`` = decodes; ``bond_valid`` = decodes and no pair
closer than the threshold; ``spacegroup_consistent`` = decodes and spglib finds the sampled group;
``dup_train`` = matches a structure of the training store; ``novel_unique`` = valid, bond-valid,
not a training duplicate and not a duplicate of an earlier row of the run (``dup_run``).
``smact_valid`` counts the valid rows whose composition SMACT accepts (``frac_smact_of_valid`` is
over the valid rows, as the paper counts compositions); the top-level ``smact`` compares all
valid rows of the run with the training split of the run's token store, when that is readable.
``plausibility`` (``generate/plausibility.py``) compares volume per atom and shortest distances
per element pair with the training store and gives the checkpoint's per-kind value errors; its
plot is ``PREFIX.plausibility.png``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from matra_hpc.errors import StoreError
from matra_hpc.generate import store as gstore
from matra_hpc.generate.plausibility import format_plausibility, plausibility, plot_plausibility
from matra_hpc.generate.temperatures import temperature_group

COUNT_COLUMNS = ["rows", "length_cut", "valid", "bond_valid", "spacegroup_consistent", "dup_train", "dup_run",
                 "novel_unique"]
FRACTION_COLUMNS = ["valid", "bond_valid", "spacegroup_consistent", "dup_train", "novel_unique"]


@dataclass
class ReportFiles:
    json: Path
    csv: Path
    png: Path
    plausibility_png: Path | None = None


def temperature_row(table, temperature: float, shards_done: int, shards_total: int, requested: int) -> dict:
    n = len(table)
    decodes = table.decodes.astype(bool)
    counts = {
        "rows": n,
        "length_cut": int((~table.complete.astype(bool)).sum()),
        "valid": int(decodes.sum()),
        "bond_valid": int((decodes & table.bonds_ok).sum()),
        "spacegroup_consistent": int((decodes & table.spacegroup_ok).sum()),
        "dup_train": int((decodes & table.dup_train).sum()),
        "dup_run": int((decodes & table.dup_run).sum()),
        "novel_unique": int((decodes & table.bonds_ok & ~table.dup_train & ~table.dup_run).sum()),
    }
    row: dict[str, Any] = {"temperature": temperature, "group": temperature_group(temperature),
                           "requested": requested, "shards_done": shards_done, "shards_total": shards_total}
    row.update(counts)
    for name in FRACTION_COLUMNS:
        row[f"frac_{name}"] = counts[name] / n if n else None  # None: nothing sampled yet
    row.update(_smact_columns(table, decodes))
    return row


def _smact_columns(table, decodes: np.ndarray) -> dict[str, Any]:
    from matra_hpc.generate.composition import smact_counts

    counts = smact_counts(table.formula[decodes])
    return {"smact_valid": counts["smact_valid"], "frac_smact_of_valid": counts["fraction"]}


def smact_summary(rows: list[dict], train_store: dict | None) -> dict[str, Any]:
    """SMACT validity of the run's valid rows next to the training split's (paper: 41.6% vs 47.2%)."""
    from matra_hpc.generate.composition import training_smact

    n = sum(r["valid"] for r in rows)
    k = sum(r["smact_valid"] for r in rows)
    out: dict[str, Any] = {"generated": {"n": n, "smact_valid": k, "fraction": k / n if n else None},
                           "train": None}
    path = (train_store or {}).get("path")
    if path:
        try:
            out["train"] = training_smact(path)
        except (StoreError, OSError) as exc:  # the report still stands without the comparison
            out["train"] = {"error": str(exc), "store": path}
    return out


def build_report(store: Path) -> dict[str, Any]:
    """The report of a generated store; consolidates first when the views are stale."""
    store = Path(store)
    root = gstore.open_root(store)
    temperatures = gstore.store_temperatures(store)
    if not all(gstore.view_is_current(store, t) for t in temperatures):
        gstore.consolidate(store)
    shards_total = int(root.attrs["fingerprint"]["shards"])
    rows = []
    structures: dict[float, list] = {}
    for t in temperatures:
        table = gstore.read_view(store, t)
        structures[t] = [table.row_structure(r) for r in range(len(table)) if table.decodes[r]]
        shards = gstore.finished_shards(store, t)
        row = temperature_row(table, t, len(shards), shards_total, int(root.attrs["fingerprint"]["per_temp"]))
        # Rank-seconds spent on the shards (sampling and checks), so throughput per device.
        seconds = sum(float(gstore.read_manifest(store, t, s).get("seconds", 0.0)) for s in shards)
        row["task_seconds"] = round(seconds, 3)
        row["rows_per_task_second"] = round(row["rows"] / seconds, 3) if seconds > 0 else None
        rows.append(row)
    if not any(r["rows"] for r in rows):
        raise StoreError(f"{store} has no finished shard yet")
    return {
        "store": str(store),
        "run_id": root.attrs.get("run_id"),
        "checkpoint": root.attrs.get("checkpoint"),
        "condition": root.attrs["fingerprint"].get("condition"),
        "train_store": root.attrs.get("train_store"),
        "complete": all(r["shards_done"] == shards_total for r in rows),
        "temperatures": rows,
        "smact": smact_summary(rows, root.attrs.get("train_store")),
        "plausibility": plausibility(structures, root.attrs.get("train_store"), root.attrs.get("checkpoint")),
    }


def default_prefix(store: Path) -> Path:
    store = Path(store).resolve()
    return store.with_name(store.name.removesuffix(".zarr") + ".report")


def write_report(report: dict[str, Any], prefix: Path) -> ReportFiles:
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(Path(f"{prefix}.json"), Path(f"{prefix}.csv"), Path(f"{prefix}.png"),
                        Path(f"{prefix}.plausibility.png"))
    section = report.get("plausibility")
    raw = section.pop("_plot", {}) if section else {}
    files.json.write_text(json.dumps(report, indent=2) + "\n")
    columns = ["temperature", "requested", "shards_done", "shards_total", *COUNT_COLUMNS,
               *[f"frac_{c}" for c in FRACTION_COLUMNS], "task_seconds", "rows_per_task_second",
               "smact_valid", "frac_smact_of_valid"]
    with open(files.csv, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in report["temperatures"]:
            writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) and k.startswith("frac_") else v)
                             for k, v in row.items()})
    plot_report(report, files.png)
    if section:
        plot_plausibility({**section, "_plot": raw}, files.plausibility_png)
    else:
        files.plausibility_png = None
    return files


def plot_report(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["temperatures"]
    temps = np.array([r["temperature"] for r in rows])
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    labels = {"valid": "valid sequences", "bond_valid": "bond-valid (no pair < threshold)",
              "spacegroup_consistent": "space group consistent", "dup_train": "duplicate of training",
              "novel_unique": "novel and unique"}
    markers = {"valid": "o", "bond_valid": "s", "spacegroup_consistent": "^", "dup_train": "x",
               "novel_unique": "D"}
    for name, label in labels.items():
        percent = [100 * r[f"frac_{name}"] if r[f"frac_{name}"] is not None else np.nan for r in rows]
        ax.plot(temps, percent, marker=markers[name], label=label)
    ax.set_xlabel("sampling temperature T")
    ax.set_ylabel("% of sampled sequences")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    title = f"{report.get('run_id') or ''}: {sum(r['rows'] for r in rows)} sampled"
    if not report["complete"]:
        title += " (incomplete run)"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def format_table(report: dict[str, Any]) -> str:
    head = f"{'T':>5} {'rows':>7} {'cut':>5} {'valid':>7} {'bonds':>7} {'spg':>7} {'dupTr':>7} {'novUni':>7}"
    lines = [head]
    for r in report["temperatures"]:
        def pct(name: str, r: dict = r) -> str:
            return f"{100 * r[f'frac_{name}']:6.1f}%" if r["rows"] else "     -"

        lines.append(f"{r['temperature']:5.2f} {r['rows']:7d} {r['length_cut']:5d} {pct('valid'):>7} "
                     f"{pct('bond_valid'):>7} {pct('spacegroup_consistent'):>7} {pct('dup_train'):>7} "
                     f"{pct('novel_unique'):>7}")
    if report.get("smact"):
        lines.append(_smact_line(report["smact"]))
    if report.get("plausibility"):
        lines.append(format_plausibility(report["plausibility"]))
    return "\n".join(lines)


def _smact_line(smact: dict[str, Any]) -> str:
    def part(counts: dict | None) -> str:
        if not counts or counts.get("fraction") is None:
            return "-"
        return f"{100 * counts['fraction']:.1f}% of {counts['n']}"

    return f"SMACT-valid compositions: generated {part(smact['generated'])}, training {part(smact.get('train'))}"
