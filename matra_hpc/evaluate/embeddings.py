"""t-SNE maps of the learned element and space-group embeddings (paper Figs. 9 and 10).

The rows of the model's token embedding (``tok_emb``) for the element tokens and the space-group
tokens are reduced to 2-D with scikit-learn's t-SNE (PCA start, fixed seed, so a rerun draws the
same map). Elements are coloured by chemical category, groups by crystal system. Elements
beyond Bi (Z > 83, outside the demo and most training sets' common range) are left out unless
``max_z`` says otherwise; group 1 is never encoded, so groups 2..230 are mapped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

CATEGORIES = ("alkali", "alkaline earth", "transition metal", "lanthanide", "actinide", "post-transition metal",
              "metalloid", "nonmetal", "halogen", "noble gas")
CRYSTAL_SYSTEMS = ((2, "triclinic"), (15, "monoclinic"), (74, "orthorhombic"), (142, "tetragonal"),
                   (167, "trigonal"), (194, "hexagonal"), (230, "cubic"))


def element_category(symbol: str) -> str:
    from pymatgen.core.periodic_table import Element

    e = Element(symbol)
    checks = (("noble gas", e.is_noble_gas), ("halogen", e.is_halogen), ("alkali", e.is_alkali),
              ("alkaline earth", e.is_alkaline), ("lanthanide", e.is_lanthanoid), ("actinide", e.is_actinoid),
              ("transition metal", e.is_transition_metal), ("metalloid", e.is_metalloid),
              ("post-transition metal", e.is_post_transition_metal))
    for name, flag in checks:
        if flag:
            return name
    return "nonmetal"


def crystal_system(group: int) -> str:
    for last, name in CRYSTAL_SYSTEMS:
        if group <= last:
            return name
    raise ValueError(f"space group {group} outside 1..230")


def tsne_2d(points: np.ndarray, seed: int = 0) -> np.ndarray:
    from sklearn.manifold import TSNE

    n = len(points)
    # perplexity must stay below the number of points; ~n/4 keeps small maps from collapsing
    perplexity = float(min(30.0, max(2.0, (n - 1) / 4)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, learning_rate="auto")
    return tsne.fit_transform(np.asarray(points, dtype=np.float64))


def embedding_maps(checkpoint: str | Path, max_z: int = 83, seed: int = 0) -> dict[str, Any]:
    """2-D t-SNE coordinates of the element and space-group embeddings of a checkpoint."""
    import torch

    from matra_hpc.model import load_model
    from matra_hpc.tokens import load_vocab

    vocab = load_vocab()
    model, meta = load_model(str(checkpoint), device="cpu")
    with torch.no_grad():
        weights = model.tok_emb.weight.detach().cpu().double().numpy()
    zs = list(range(1, max_z + 1))
    elements = [vocab.element_symbols[z - 1] for z in zs]
    element_xy = tsne_2d(weights[[vocab.element(z) for z in zs]], seed)
    groups = list(range(2, 231))
    group_xy = tsne_2d(weights[[vocab.spacegroup(g) for g in groups]], seed)
    return {
        "checkpoint": str(checkpoint), "step": meta.get("step") if isinstance(meta, dict) else None,
        "method": f"sklearn TSNE (2-D, PCA init, seed {seed}) of the token embedding rows",
        "elements": [{"symbol": s, "category": element_category(s), "x": float(x), "y": float(y)}
                     for s, (x, y) in zip(elements, element_xy, strict=True)],
        "spacegroups": [{"group": g, "crystal_system": crystal_system(g), "x": float(x), "y": float(y)}
                        for g, (x, y) in zip(groups, group_xy, strict=True)],
    }


def plot_element_map(maps: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 5.2), dpi=120)
    cmap = plt.get_cmap("tab10")
    for i, category in enumerate(CATEGORIES):
        pts = [e for e in maps["elements"] if e["category"] == category]
        if not pts:
            continue
        ax.scatter([p["x"] for p in pts], [p["y"] for p in pts], s=60, color=cmap(i), alpha=0.35, label=category)
        for p in pts:
            ax.annotate(p["symbol"], (p["x"], p["y"]), fontsize=6, ha="center", va="center")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("t-SNE of the learned element embeddings (arbitrary units)", fontsize=9)
    ax.legend(fontsize=6, loc="best", ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_spacegroup_map(maps: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 5.2), dpi=120)
    cmap = plt.get_cmap("tab10")
    for i, (_, system) in enumerate(CRYSTAL_SYSTEMS):
        pts = [g for g in maps["spacegroups"] if g["crystal_system"] == system]
        ax.scatter([p["x"] for p in pts], [p["y"] for p in pts], s=14, color=cmap(i), label=system)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("t-SNE of the learned space-group embeddings (arbitrary units)", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
