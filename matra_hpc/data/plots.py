"""Pictures of a token store, written next to its ``report.json``.

What a user checks before spending GPU hours on a store: the energy-above-hull distribution
(with the 0.075 eV/atom stability threshold of the property token), the crystal systems, and the
sequence lengths that set the model's context and the sampler's batch layout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from matra_hpc.tokens.wyckoff import crystal_system

STABILITY_THRESHOLD = 0.075  # eV/atom, EHULL_LOW / EHULL_HIGH (docs/contracts.md section A)
SYSTEMS = ["triclinic", "monoclinic", "orthorhombic", "tetragonal", "trigonal", "hexagonal", "cubic"]


def plot_token_store(store: str | Path, out: str | Path | None = None) -> Path:
    """Write ``report.png`` (e-hull histogram, crystal systems, sequence lengths) for a store."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = zarr.open_group(str(store), mode="r")
    ehull = np.asarray(root["e_above_hull"][:], dtype=float)
    split = np.array([str(s) for s in root["split"][:]])
    groups = np.asarray(root["spacegroup"][:], dtype=int)
    lengths = np.diff(np.asarray(root["offsets"][:]))
    path = Path(out) if out is not None else Path(store) / "report.png"

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    ax = axes[0]
    known = np.isfinite(ehull)
    top = float(np.quantile(ehull[known], 0.99)) if known.any() else 1.0
    bins = np.linspace(0.0, max(top, 0.1), 40)
    for name in ("train", "val"):
        sel = known & (split == name)
        ax.hist(np.clip(ehull[sel], 0, bins[-1]), bins=bins, alpha=0.6, label=f"{name} ({sel.sum()})")
    ax.axvline(STABILITY_THRESHOLD, color="k", ls="--", lw=1, label="stability token threshold")
    ax.set_xlabel("energy above hull (eV/atom)")
    ax.set_ylabel("structures")
    ax.set_title(f"e-hull ({(~known).sum()} without a value)")
    ax.legend(fontsize=8)

    counts = [int(sum(crystal_system(int(g)) == s for g in groups)) for s in SYSTEMS]
    axes[1].bar(range(len(SYSTEMS)), counts)
    axes[1].set_xticks(range(len(SYSTEMS)), SYSTEMS, rotation=30, ha="right")
    axes[1].set_title("crystal systems")

    axes[2].hist(lengths, bins=np.arange(lengths.min(), lengths.max() + 2) - 0.5 if len(lengths) else 10)
    axes[2].set_xlabel("tokens per sequence (with <end>)")
    axes[2].set_title(f"sequence lengths (max {lengths.max() if len(lengths) else 0})")
    fig.suptitle(f"{Path(store).name}: {len(groups)} structures")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.partial.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
