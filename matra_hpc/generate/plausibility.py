"""Are the generated crystals physical? Volume per atom and shortest distances, generated against
the training store, and the model's per-kind value errors (docs/generation-quality.md).

``report generate`` adds this as its ``plausibility`` section and draws it beside the table:

- volume per atom (A^3) of every decoded structure, per temperature and overall, against a
  seeded sample of the training split;
- the shortest distance of every decoded structure, and per element pair the shortest distance
  between an atom of one element and one of the other (periodic images included), median over
  the structures that hold the pair, generated against training;
- the per-kind value errors of the checkpoint on the validation split (coordinates, lengths,
  angles), with the mean predictor's, as the training stage measured them (``meta.json``).
"""

from __future__ import annotations

import json
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

TRAIN_SAMPLE = 1000
"""Training structures measured (a seeded sample: the statistics, not the whole store)."""
PAIR_CUTOFF = 6.0
"""Angstrom; an element pair further apart than this in a structure is not counted for it."""
TOP_PAIRS = 12


def structure_stats(structures) -> dict[str, Any]:
    """Volume per atom, shortest distance and per element pair shortest distances of structures."""
    vpa, shortest = [], []
    pairs: dict[str, list[float]] = defaultdict(list)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for s in structures:
            n = len(s)
            if n == 0:
                continue
            vpa.append(float(s.volume) / n)
            # an unphysically dense cell (untrained models make 1 A cells) would list millions of
            # neighbours within 6 A: shrink the radius to ~200 expected neighbours per atom
            radius = min(PAIR_CUTOFF, (200 * vpa[-1] * 3 / (4 * np.pi)) ** (1 / 3))
            centres, neighbours, _, dist = s.get_neighbor_list(r=radius)
            if len(dist) == 0:
                continue
            shortest.append(float(dist.min()))
            z = np.asarray(s.atomic_numbers)
            a, b = z[centres], z[neighbours]
            lo, hi = np.minimum(a, b), np.maximum(a, b)
            key = lo * 1000 + hi
            order = np.lexsort((dist, key))
            keys, first = np.unique(key[order], return_index=True)
            symbols = {int(x): str(sp) for x, sp in zip(z, s.species, strict=True)}
            for k, i in zip(keys, first, strict=True):
                pairs[f"{symbols[int(k // 1000)]}-{symbols[int(k % 1000)]}"].append(float(dist[order][i]))
    return {"vpa": vpa, "shortest": shortest, "pairs": pairs}


def _summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "median": None, "q25": None, "q75": None}
    q25, median, q75 = np.percentile(values, [25, 50, 75])
    return {"n": len(values), "median": round(float(median), 4), "q25": round(float(q25), 4),
            "q75": round(float(q75), 4)}


def train_structures(path: str | Path, n: int = TRAIN_SAMPLE, seed: int = 0) -> list:
    """A seeded sample of up to ``n`` structures of the training split of a token store."""
    from pymatgen.core import Lattice, Structure

    from matra_hpc.data.store import open_token_store

    root = open_token_store(path)
    split = np.asarray(root["split"][:])
    rows = np.flatnonzero(split == "train")
    if len(rows) > n:
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=n, replace=False))
    lattice = np.asarray(root["lattice"][:])
    offsets = np.asarray(root["site_offsets"][:])
    frac = np.asarray(root["frac_coords"][:])
    numbers = np.asarray(root["numbers"][:])
    out = []
    for r in rows:
        a, b = offsets[r], offsets[r + 1]
        out.append(Structure(Lattice(lattice[r]), numbers[a:b].astype(int), frac[a:b]))
    return out


def checkpoint_value_errors(checkpoint: dict | None) -> dict[str, Any] | None:
    """Per-kind validation errors recorded with the checkpoint the store was generated from."""
    if not checkpoint:
        return None
    folder = checkpoint.get("resolved") or checkpoint.get("path")
    meta_path = Path(folder) / "meta.json" if folder else None
    if meta_path is None or not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None
    val = meta.get("val") or {}
    out = {}
    for kind in ("coordinate", "length", "angle"):
        if f"mae_{kind}" in val:
            out[kind] = {"mae": val[f"mae_{kind}"], "mean_predictor_mae": val.get(f"base_mae_{kind}"),
                         "value_loss": val.get(f"vloss_{kind}")}
    return {"step": meta.get("step"), "kinds": out} if out else None


def plausibility(generated_by_t: dict[float, list], train_store: dict | None,
                 checkpoint: dict | None) -> dict[str, Any]:
    """The ``plausibility`` section of the report (see the module docstring)."""
    gen_all = {"vpa": [], "shortest": [], "pairs": defaultdict(list)}
    by_t = []
    for t, structures in generated_by_t.items():
        stats = structure_stats(structures)
        by_t.append({"temperature": t, "volume_per_atom": _summary(stats["vpa"]),
                     "shortest_distance": _summary(stats["shortest"])})
        gen_all["vpa"] += stats["vpa"]
        gen_all["shortest"] += stats["shortest"]
        for k, v in stats["pairs"].items():
            gen_all["pairs"][k] += v
    out: dict[str, Any] = {"generated": {"volume_per_atom": _summary(gen_all["vpa"]),
                                         "shortest_distance": _summary(gen_all["shortest"])},
                           "by_temperature": by_t, "train": None}
    train_pairs: dict[str, list[float]] = {}
    train_vpa: list[float] = []
    if train_store and train_store.get("path"):
        try:
            stats = structure_stats(train_structures(train_store["path"]))
            train_pairs, train_vpa = stats["pairs"], stats["vpa"]
            out["train"] = {"volume_per_atom": _summary(stats["vpa"]),
                            "shortest_distance": _summary(stats["shortest"]), "sampled": len(stats["vpa"])}
        except Exception as exc:  # the report stands without the comparison; say why
            out["train"] = {"error": f"{type(exc).__name__}: {exc}"}
    gen_med, train_med = out["generated"]["volume_per_atom"]["median"], (out["train"] or {}).get(
        "volume_per_atom", {}).get("median")
    out["vpa_ratio"] = round(gen_med / train_med, 4) if gen_med and train_med else None
    common = sorted(gen_all["pairs"], key=lambda k: -len(gen_all["pairs"][k]))[:TOP_PAIRS]
    out["pairs"] = [{"pair": k, "generated": _summary(gen_all["pairs"][k]),
                     "train": _summary(train_pairs.get(k, []))} for k in common]
    out["value_errors"] = checkpoint_value_errors(checkpoint)
    # raw values for the plot only (dropped before the JSON is written)
    out["_plot"] = {"gen_vpa": gen_all["vpa"], "train_vpa": train_vpa}
    return out


def plot_plausibility(section: dict[str, Any], path: Path) -> None:
    """Volume per atom histograms, per pair shortest distances and per-kind value errors."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4.0), dpi=110)
    raw = section.get("_plot", {})
    ax = axes[0]
    bins = np.logspace(np.log10(0.5), np.log10(200), 50)
    for key, label in (("train_vpa", "training store"), ("gen_vpa", "generated")):
        if raw.get(key):
            ax.hist(np.clip(raw[key], 0.5, 200), bins=bins, alpha=0.5, density=True, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("volume per atom (A^3)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    ax = axes[1]
    pairs = [p for p in section.get("pairs", []) if p["train"]["median"] is not None]
    if pairs:
        x = [p["train"]["median"] for p in pairs]
        y = [p["generated"]["median"] for p in pairs]
        ax.scatter(x, y, s=18)
        for p, xi, yi in zip(pairs, x, y, strict=True):
            ax.annotate(p["pair"], (xi, yi), fontsize=7)
        lim = [0, max(max(x), max(y)) * 1.1]
        ax.plot(lim, lim, "k--", lw=0.8)
    ax.set_xlabel("training: median shortest pair distance (A)")
    ax.set_ylabel("generated (A)")
    ax = axes[2]
    errors = (section.get("value_errors") or {}).get("kinds", {})
    if errors:
        kinds = list(errors)
        model = [errors[k]["mae"] / errors[k]["mean_predictor_mae"] if errors[k].get("mean_predictor_mae")
                 else np.nan for k in kinds]
        ax.bar(kinds, model, color="C2")
        ax.axhline(1.0, color="k", lw=0.8, label="mean predictor")
        ax.axhline(0.5, color="k", lw=0.8, ls="--", label="half of it")
        ax.legend(fontsize=8)
    ax.set_ylabel("validation MAE / mean predictor's")
    ax.set_title("value errors per kind", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def format_plausibility(section: dict[str, Any]) -> str:
    gen = section["generated"]["volume_per_atom"]["median"]
    train = ((section.get("train") or {}).get("volume_per_atom") or {}).get("median")
    short = section["generated"]["shortest_distance"]["median"]
    line = f"volume per atom (median): generated {gen} A^3, training {train} A^3"
    if section.get("vpa_ratio"):
        line += f" (ratio {section['vpa_ratio']:.2f})"
    line += f"; shortest distance (median): {short} A"
    errors = (section.get("value_errors") or {}).get("kinds", {})
    if errors:
        parts = [f"{k} {v['mae']:.3g} (mean predictor {v['mean_predictor_mae']:.3g})"
                 if v.get("mean_predictor_mae") else f"{k} {v['mae']:.3g}" for k, v in errors.items()]
        line += "\nvalidation value errors (MAE): " + ", ".join(parts)
    return line
