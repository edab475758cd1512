"""Plots written at the end of a run (matplotlib is imported only here, and only when plotting)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lth_runner.utils.io import atomic_path


def accuracy_vs_density(summary: dict[str, Any], path: str | Path) -> Path:
    """Test accuracy (at the best validation epoch) of the ticket and each control against density."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = summary["rounds"]
    fig, ax = plt.subplots(figsize=(6, 4))
    series = {"ticket": [(r["density"], r["ticket"]["best_val_test_acc"]) for r in rounds]}
    for r in rounds:
        for name, result in r["controls"].items():
            series.setdefault(name, []).append((result["density"], result["best_val_test_acc"]))
    for name, points in series.items():
        points = [(d, a) for d, a in points if a is not None]
        if points:
            xs, ys = zip(*points)
            ax.plot([100 * x for x in xs], [100 * y for y in ys], marker="o", label=name)
    ax.set_xscale("log")
    ticks = sorted({round(100 * r["density"], 1) for r in rounds}, reverse=True)
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.invert_xaxis()
    ax.set_xlabel("weights remaining (%)")
    ax.set_ylabel("test accuracy at best validation epoch (%)")
    ax.set_title(f"{summary['method']}: {summary['model']} on {summary['dataset']} (seed {summary['seed']})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path
