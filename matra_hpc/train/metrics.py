"""Training metrics: one JSON object a line, and a loss-curve PNG drawn from them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"


class MetricsLog:
    """Append-only JSONL of ``{"kind": "train"|"val"|"event", "step": ..., ...}`` records."""

    def __init__(self, out_dir: Path, enabled: bool = True) -> None:
        self.path = Path(out_dir) / METRICS_FILE
        self.enabled = enabled

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
            handle.flush()

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (written after the checkpoint a run resumes from).

        The curve then continues from the checkpoint as if the run had never stopped.
        """
        if not self.enabled or not self.path.exists():
            return
        kept = [rec for rec in read_metrics(self.path) if int(rec.get("step", 0)) <= step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(rec, sort_keys=True) + "\n" for rec in kept))
        os.replace(tmp, self.path)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    if not Path(path).exists():
        return records
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by a kill: the record is lost, the rest stays readable
    return records


KINDS = ("coordinate", "length", "angle")


def plot_loss_curve(metrics_path: Path, png_path: Path) -> None:
    """Left: train loss per step and validation loss per epoch (log scale while every loss is
    positive; the mixture head's negative log-likelihood can take the total below zero).
    Right: per kind of value, the validation mean absolute error over the mean predictor's
    (below 1: the model beats a constant; the dashed line is half of it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    fig, (ax, kx) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1, label="train loss")
    if val:
        ax.plot([r["step"] for r in val], [r["loss"] for r in val], "o-", ms=3, label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("CE + w * value loss")
    if train or val:
        if all(r["loss"] > 0 for r in train + val):
            ax.set_yscale("log")
        ax.legend()
    ax.grid(alpha=0.3)
    for kind in KINDS:
        pts = [(r["step"], r[f"mae_{kind}"] / r[f"base_mae_{kind}"]) for r in val
               if r.get(f"base_mae_{kind}") and f"mae_{kind}" in r]
        if pts:
            kx.plot(*zip(*pts, strict=True), "o-", ms=3, label=kind)
    kx.axhline(1.0, color="k", lw=0.8)
    kx.axhline(0.5, color="k", lw=0.8, ls="--")
    kx.set_xlabel("optimizer step")
    kx.set_ylabel("validation MAE / mean predictor's")
    kx.set_title("per-kind value errors", fontsize=9)
    if kx.lines[2:]:
        kx.legend()
    kx.grid(alpha=0.3)
    fig.tight_layout()
    tmp = png_path.with_name(png_path.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, png_path)
