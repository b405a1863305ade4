"""``report all``: every comparison of the paper for one run, as one HTML page and its Markdown twin.

Inputs are the stores (and the JSON of ``eval recovery`` / ``eval conditioning``) a user already
has; every number comes from the stage's own report function (``report generate``, ``report
screen``), so the page's JSON holds the same numbers as the stage reports, unchanged:

- Fig. 2, validity vs T, and SMACT validity: ``build_report`` of the generated store;
- Table 1: the screen report of the model's screened store;
- Fig. 3: the recovery curve of ``eval recovery``;
- Fig. 4: e-hull distributions per T of the novel, unique candidates (the screen report's values)
  against the screened PyXtal baseline, each normalised to one as in the paper;
- the stable fraction (e_hull below 0.1 eV/atom among the novel, unique candidates: the screen
  report's ``n_below_0.100`` / ``n_unique``) of the model, all temperatures pooled, over the
  baseline's, with its 95% interval (``stats.ratio``);
- the conditioning comparison of ``eval conditioning``;
- t-SNE maps of the learned element and space-group embeddings of ``--checkpoint``.

Output folder (default ``report/`` beside the generated store): ``report.html`` (images
embedded as data URIs, no script, no external resource), ``report.md`` (links the PNGs beside
it), ``report.json`` and one PNG per figure.
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from matra_hpc.errors import StoreError
from matra_hpc.evaluate import stats
from matra_hpc.evaluate.config import ReportAllConfig

STABLE_THRESHOLD = 0.1
"""eV/atom: the paper's 'stable' for the model / baseline ratio."""
EHULL_BINS = np.round(np.arange(-0.2, 1.0 + 1e-9, 0.025), 3)
"""Fig. 4 bins, eV/atom; values outside are counted in the first/last bin."""
BELOW_KEYS = ("n_below_0.001", "n_below_0.050", "n_below_0.100")


# ------------------------------------------------------------------ reading the stage reports


def store_schema(path: str | Path) -> str:
    meta = json.loads((Path(path) / "zarr.json").read_text())
    return str(meta.get("attributes", {}).get("schema", ""))


def screen_report(store: str | Path) -> dict[str, Any]:
    """The screen stage's report of a screened store (``report screen``), unchanged."""
    from matra_hpc.screen.report import build_report

    return build_report(store)


def screen_counts(entry: dict[str, Any]) -> dict[str, Any]:
    """The nested counts of one temperature entry of a screen report."""
    return entry.get("counts", entry)


def pooled_counts(report: dict[str, Any]) -> dict[str, int]:
    """The counts of a screen report over all its temperatures (its ``total``)."""
    return dict(report["total"])


def stable_fraction(counts: dict[str, int], threshold: float = STABLE_THRESHOLD) -> dict[str, Any]:
    """Fraction of the candidates (novel, unique) with e_hull below threshold, with its interval."""
    return stats.proportion(counts[f"n_below_{threshold:.3f}"], counts["n_unique"])


def candidate_ehull(report: dict[str, Any]) -> dict[float, np.ndarray]:
    """e_hull (eV/atom) of the novel, unique candidates per temperature, as the screen report lists them."""
    return {float(e["temperature"]): np.asarray(e["e_hull_novel_unique"]["values"], dtype=float)
            for e in report["temperatures"]}


def histogram(values: np.ndarray) -> list[int]:
    clipped = np.clip(values, EHULL_BINS[0], EHULL_BINS[-1] - 1e-9)
    counts, _ = np.histogram(clipped, bins=EHULL_BINS)
    return [int(c) for c in counts]


# ------------------------------------------------------------------ the whole report


def build_report_all(config: ReportAllConfig) -> dict[str, Any]:
    """Every number of the page; the figures are drawn from this dict alone."""
    from matra_hpc.generate.report import build_report as generate_report

    config.validate()
    report: dict[str, Any] = {"inputs": {k: (str(Path(v).resolve()) if v else None) for k, v in (
        ("generated", config.generated), ("screened", config.screened), ("baseline", config.baseline),
        ("recovery", config.recovery), ("conditioning", config.conditioning), ("checkpoint", config.checkpoint))}}
    report["generate"] = generate_report(config.generated)
    # `report generate` keeps its raw plot arrays out of its JSON: so does the page's
    (report["generate"].get("plausibility") or {}).pop("_plot", None)
    report["smact"] = {"model": report["generate"]["smact"]["generated"], "train": report["generate"]["smact"]["train"]}
    if config.screened:
        report["screen"] = screen_report(config.screened)
    baseline_kind = store_schema(config.baseline) if config.baseline else None
    if config.baseline:
        if baseline_kind.startswith("matra-hpc/screened/"):
            report["baseline_screen"] = screen_report(config.baseline)
            generated_path = _generated_path_of(config.baseline)
            if generated_path is not None:
                report["baseline_generate"] = generate_report(generated_path)
        elif baseline_kind.startswith("matra-hpc/generated/"):
            report["baseline_generate"] = generate_report(config.baseline)
        else:
            raise StoreError(f"--baseline {config.baseline} is neither a screened nor a generated store "
                             f"(schema {baseline_kind!r})")
        if "baseline_generate" in report:
            report["smact"]["baseline"] = report["baseline_generate"]["smact"]["generated"]
    if "screen" in report and "baseline_screen" in report:
        model, base = pooled_counts(report["screen"]), pooled_counts(report["baseline_screen"])
        key = f"n_below_{STABLE_THRESHOLD:.3f}"
        report["stable_ratio"] = {
            "threshold_ev_per_atom": STABLE_THRESHOLD,
            "definition": "fraction of the novel, unique candidates (relaxed, connected) with e_hull below the "
                          "threshold; the model pooled over its temperatures, divided by the baseline's",
            **stats.ratio(model[key], model["n_unique"], base[key], base["n_unique"]),
            "per_temperature": [
                {"temperature": e["temperature"],
                 **stats.ratio(screen_counts(e)[key], screen_counts(e)["n_unique"], base[key], base["n_unique"])}
                for e in report["screen"]["temperatures"]],
        }
    if "screen" in report:
        model_ehull = candidate_ehull(report["screen"])
        report["ehull_distribution"] = {
            "bins_ev_per_atom": [float(b) for b in EHULL_BINS],
            "model": [{"temperature": t, "n": int(len(v)), "counts": histogram(v)} for t, v in model_ehull.items()],
            "baseline": None,
        }
        if "baseline_screen" in report:
            base_values = np.concatenate(list(candidate_ehull(report["baseline_screen"]).values()) or [np.zeros(0)])
            report["ehull_distribution"]["baseline"] = {"n": int(len(base_values)), "counts": histogram(base_values)}
    if config.recovery:
        report["recovery"] = json.loads(Path(config.recovery).read_text())
    if config.conditioning:
        report["conditioning"] = json.loads(Path(config.conditioning).read_text())
    if config.checkpoint:
        from matra_hpc.evaluate.embeddings import embedding_maps

        report["embeddings"] = embedding_maps(config.checkpoint)
    return report


def _generated_path_of(screened: str | Path) -> str | None:
    """The generated store a screened store was made from, when it is still there."""
    meta = json.loads((Path(screened) / "zarr.json").read_text()).get("attributes", {})
    path = (meta.get("generated") or {}).get("path")
    return path if path and (Path(path) / "zarr.json").is_file() else None


# ------------------------------------------------------------------ figures


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_ehull(dist: dict[str, Any], path: Path) -> None:
    """Fig. 4: normalised e-hull histograms per temperature, the baseline in black."""
    plt = _pyplot()
    edges = np.asarray(dist["bins_ev_per_atom"])
    centers = (edges[:-1] + edges[1:]) / 2
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    model = dist["model"]
    cmap = plt.get_cmap("cool")
    for i, entry in enumerate(model):
        counts = np.asarray(entry["counts"], dtype=float)
        if counts.sum() == 0:
            continue
        color = cmap(i / max(1, len(model) - 1))
        ax.plot(centers, counts / counts.sum(), color=color, lw=1.2, label=f"T={entry['temperature']:.2f} (n={entry['n']})")
    base = dist.get("baseline")
    if base and sum(base["counts"]):
        counts = np.asarray(base["counts"], dtype=float)
        ax.plot(centers, counts / counts.sum(), color="black", lw=2.2, label=f"PyXtal baseline (n={base['n']})")
    ax.axvline(STABLE_THRESHOLD, color="gray", ls=":", lw=1)
    ax.set_xlabel("energy above hull (eV/atom; outside the range: first/last bin)")
    ax.set_ylabel("fraction of candidates per bin")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="upper right", ncol=2)
    ax.set_title("Fig. 4: e-hull of novel, unique candidates", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_conditioning(result: dict[str, Any], path: Path) -> None:
    """Fractions below each threshold per condition with their 95% intervals."""
    plt = _pyplot()
    rows = result["conditions"]
    thresholds = result["thresholds_ev_per_atom"]
    fig, ax = plt.subplots(figsize=(6.0, 3.8), dpi=120)
    width = 0.8 / max(1, len(thresholds))
    for j, thr in enumerate(thresholds):
        xs, ys, lo, hi = [], [], [], []
        for i, row in enumerate(rows):
            p = row["below"][f"{thr:.3f}"]
            if p["fraction"] is None:
                continue
            xs.append(i + (j - (len(thresholds) - 1) / 2) * width)
            ys.append(100 * p["fraction"])
            lo.append(100 * (p["fraction"] - p["low"]))
            hi.append(100 * (p["high"] - p["fraction"]))
        ax.bar(xs, ys, width=width, yerr=[lo, hi], capsize=3, label=f"e_hull < {thr} eV/atom")
    ax.set_xticks(range(len(rows)), [r["label"] for r in rows])
    ax.set_ylabel("% of candidates (95% interval)")
    temps = result.get("temperatures") or [result["temperature"]]
    ax.set_title("conditioning at T=" + ", ".join(f"{t:.2f}" for t in temps), fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_smact(smact: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    labels, values, errors = [], [], [[], []]
    for name in ("model", "train", "baseline"):
        counts = smact.get(name)
        if not counts or counts.get("fraction") is None:
            continue
        p = stats.proportion(counts["smact_valid"], counts["n"])
        labels.append(f"{name}\n(n={counts['n']})")
        values.append(100 * p["fraction"])
        errors[0].append(100 * (p["fraction"] - p["low"]))
        errors[1].append(100 * (p["high"] - p["fraction"]))
    fig, ax = plt.subplots(figsize=(4.8, 3.4), dpi=120)
    ax.bar(range(len(values)), values, yerr=errors, capsize=4, color=["tab:blue", "tab:gray", "black"][:len(values)])
    ax.set_xticks(range(len(values)), labels)
    ax.set_ylabel("% SMACT-valid compositions")
    ax.set_ylim(0, 105)
    ax.set_title("SMACT validity (95% interval)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_table1(screen: dict[str, Any], path: Path) -> None:
    """Table 1 as a funnel per temperature (counts on a log axis)."""
    plt = _pyplot()
    keys = ["n_generated", "n_screened", "n_relaxed", "n_connected", "n_novel", "n_unique", *BELOW_KEYS]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    cmap = plt.get_cmap("cool")
    entries = screen["temperatures"]
    for i, entry in enumerate(entries):
        counts = screen_counts(entry)
        ax.plot(range(len(keys)), [max(counts.get(k, 0), 0.8) for k in keys], marker="o",
                color=cmap(i / max(1, len(entries) - 1)), label=f"T={entry['temperature']:.2f}")
    ax.set_yscale("log")
    ax.set_xticks(range(len(keys)), [k.removeprefix("n_") for k in keys], rotation=35, ha="right", fontsize=7)
    ax.set_ylabel("structures")
    ax.set_title("Table 1: screening funnel per temperature", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ------------------------------------------------------------------ page


@dataclass
class Section:
    title: str
    text: list[str]
    """Paragraphs (plain text)."""
    table: list[list[str]] | None = None
    """Header row first."""
    figures: list[tuple[str, str]] | None = None
    """(file name in the output folder, caption)."""


def write_report_all(report: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Draw the figures and write report.{json,md,html} into out_dir; returns the paths."""
    from matra_hpc.generate.report import plot_report
    from matra_hpc.util import write_json_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sections: list[Section] = []

    gen = report["generate"]
    plot_report(gen, out / "fig2_validity.png")
    sections.append(Section(
        "Fig. 2: validity per sampling temperature",
        [f"Run {gen.get('run_id')}: fractions of sampled sequences (store {gen['store']})."],
        [["T", "rows", "valid", "bond-valid", "space group ok", "dup. training", "novel+unique", "SMACT of valid"]]
        + [[f"{r['temperature']:.2f}", str(r["rows"]), _pct(r["frac_valid"]), _pct(r["frac_bond_valid"]),
            _pct(r["frac_spacegroup_consistent"]), _pct(r["frac_dup_train"]), _pct(r["frac_novel_unique"]),
            _pct(r.get("frac_smact_of_valid"))] for r in gen["temperatures"]],
        [("fig2_validity.png", "Fig. 2: validity, bond validity, space-group consistency, duplicates vs T")]))

    if "screen" in report:
        plot_table1(report["screen"], out / "table1_funnel.png")
        keys = ["n_generated", "n_screened", "n_relaxed", "n_connected", "n_novel", "n_unique", *BELOW_KEYS]
        rows = [["T", *[k.removeprefix("n_") for k in keys]]]
        for entry in report["screen"]["temperatures"]:
            counts = screen_counts(entry)
            rows.append([f"{entry['temperature']:.2f}", *[str(counts.get(k, "-")) for k in keys]])
        sections.append(Section("Table 1: screening per temperature",
                                ["Counts are nested: each column is a subset of the one before; the "
                                 "n_below columns count the novel, unique candidates by e_hull (eV/atom)."],
                                rows, [("table1_funnel.png", "Table 1 as a funnel (log scale)")]))
    else:
        sections.append(Section("Table 1: screening per temperature", ["No screened store given (--screened)."]))

    if "ehull_distribution" in report:
        plot_ehull(report["ehull_distribution"], out / "fig4_ehull.png")
        text = ["Histograms of e_hull, each normalised to one, per sampling temperature; the PyXtal baseline "
                "in black." if report["ehull_distribution"]["baseline"] else
                "No screened baseline given: the model's curves only."]
        sections.append(Section("Fig. 4: energy above hull", text, None,
                                [("fig4_ehull.png", "Fig. 4: e-hull distributions per T against the baseline")]))
    if "stable_ratio" in report:
        r = report["stable_ratio"]
        rows = [["", "stable / candidates", "fraction [95% interval]"],
                ["model (all T)", f"{r['numerator']['k']} / {r['numerator']['n']}", stats.format_proportion(r["numerator"])],
                ["PyXtal baseline", f"{r['denominator']['k']} / {r['denominator']['n']}",
                 stats.format_proportion(r["denominator"])],
                ["ratio model / baseline", "", stats.format_ratio(r)]]
        rows += [[f"ratio at T={p['temperature']:.2f}", f"{p['numerator']['k']} / {p['numerator']['n']}",
                  stats.format_ratio(p)] for p in r["per_temperature"]]
        sections.append(Section(f"Stable fraction, model / baseline (e_hull < {r['threshold_ev_per_atom']} eV/atom)",
                                [r["definition"] + " (paper: 8x)."], rows))

    if "recovery" in report:
        from matra_hpc.evaluate.recovery import plot_recovery

        rec = report["recovery"]
        plot_recovery(rec, out / "fig3_recovery.png")
        rows = [["held-out id", "formula", "space group", "recovered at (sampled rows)"]]
        found = {r["held_out"]: r for r in rec["recovered"]}
        for h in rec.get("held_out", []):
            rows.append([h["id"], h["formula"], str(h["spacegroup"]),
                         str(found[h["id"]]["at"]) if h["id"] in found else "not found"])
        sections.append(Section(
            f"Fig. 3: recovery of the held-out {rec.get('system', '')} system",
            [f"{rec['n_recovered']} of {rec['n_held_out']} held-out structures recovered in {rec['n_sampled']} "
             f"sampled rows (StructureMatcher ltol 0.2, stol 0.3, angle 5; "
             f"{'relaxed' if rec.get('relaxed') else 'generated'} structures)."],
            rows, [("fig3_recovery.png", "Fig. 3: recovered vs sampled")]))
    else:
        sections.append(Section("Fig. 3: chemical-system recovery", ["No recovery result given (--recovery)."]))

    if "conditioning" in report:
        cond = report["conditioning"]
        plot_conditioning(cond, out / "conditioning.png")
        thresholds = cond["thresholds_ev_per_atom"]
        rows = [["condition", "candidates", *[f"e_hull < {t}" for t in thresholds]]]
        for row in cond["conditions"]:
            rows.append([row["label"], str(row["n_candidates"]),
                         *[stats.format_proportion(row["below"][f"{t:.3f}"]) for t in thresholds]])
        sections.append(Section("Conditioning on stability", [cond.get("definition", "")], rows,
                                [("conditioning.png", "fractions below the thresholds per condition")]))

    plot_smact(report["smact"], out / "smact.png")
    smact_rows = [["compositions", "SMACT-valid", "fraction [95% interval]"]]
    for name in ("model", "train", "baseline"):
        counts = report["smact"].get(name)
        if counts and counts.get("n") is not None:
            smact_rows.append([name, f"{counts['smact_valid']} / {counts['n']}",
                               stats.format_proportion(stats.proportion(counts["smact_valid"], counts["n"]))])
    sections.append(Section("SMACT validity of compositions",
                            ["Valid generated rows vs the training split (paper: 41.6% vs 47.2%)."],
                            smact_rows, [("smact.png", "SMACT-valid fraction")]))

    if "embeddings" in report:
        from matra_hpc.evaluate.embeddings import plot_element_map, plot_spacegroup_map

        plot_element_map(report["embeddings"], out / "tsne_elements.png")
        plot_spacegroup_map(report["embeddings"], out / "tsne_spacegroups.png")
        sections.append(Section("Learned embeddings (paper Figs. 9-10)", [report["embeddings"]["method"] + "."], None,
                                [("tsne_elements.png", "elements by category"),
                                 ("tsne_spacegroups.png", "space groups by crystal system")]))

    files = {"json": out / "report.json", "md": out / "report.md", "html": out / "report.html"}
    write_json_atomic(files["json"], _jsonable(report))
    files["md"].write_text(render_markdown(sections))
    files["html"].write_text(render_html(sections, out))
    files["figures"] = [out / f for s in sections for f, _ in (s.figures or [])]
    return files


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating | float):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    return obj


TITLE = "matra-hpc: evaluation report"


def render_markdown(sections: list[Section]) -> str:
    lines = [f"# {TITLE}", "", "Numbers: `report.json` beside this file. Figures: the PNGs beside it.", ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        lines += [p for t in s.text if t for p in (t, "")]
        if s.table:
            lines.append("| " + " | ".join(s.table[0]) + " |")
            lines.append("|" + "---|" * len(s.table[0]))
            lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in s.table[1:]]
            lines.append("")
        for name, caption in s.figures or []:
            lines += [f"![{caption}]({name})", ""]
    return "\n".join(lines)


def render_html(sections: list[Section], folder: Path) -> str:
    """A self-contained page: images as data URIs, inline style, no script or external resource."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{html.escape(TITLE)}</title>",
             "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:90%}td,th{border:1px solid #bbb;padding:.25em .6em;"
             "text-align:right}th{background:#eee}td:first-child,th:first-child{text-align:left}"
             "figure{margin:1em 0}img{max-width:100%}figcaption{font-size:85%;color:#555}</style>",
             "</head><body>", f"<h1>{html.escape(TITLE)}</h1>",
             "<p>Every number is also in <code>report.json</code>; every figure is also a PNG beside this page.</p>"]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        parts += [f"<p>{html.escape(t)}</p>" for t in s.text if t]
        if s.table:
            parts.append("<table><thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in s.table[0])
                         + "</tr></thead><tbody>")
            parts += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in s.table[1:]]
            parts.append("</tbody></table>")
        for name, caption in s.figures or []:
            data = base64.b64encode((folder / name).read_bytes()).decode("ascii")
            parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
                         f"<figcaption>{html.escape(caption)} ({html.escape(name)})</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
