"""Plots written at the end of a run (matplotlib is imported only here, and only when plotting)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lth_runner.summary import Summary
from lth_runner.utils.io import atomic_path


def figure(panels: int, *, width: float = 5.6, height: float = 4.2, max_cols: int = 3) -> tuple[Any, list[Any]]:
    """A figure with ``panels`` axes on an Agg canvas (no pyplot state, no global backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = max(1, min(panels, max_cols))
    rows = max(1, math.ceil(panels / cols))
    fig = Figure(figsize=(width * cols, height * rows))
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(rows * cols)]
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, axes[:panels]


def save_figure(fig: Any, path: str | Path) -> Path:
    """Lay out and write ``fig`` as a PNG, atomically."""
    path = Path(path)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return path


def accuracy_vs_density(summary: Summary, path: str | Path) -> Path:
    """Test accuracy (the summary's rule: at the best validation epoch) of the ticket and each control against
    density."""
    rounds = summary.rounds
    fig, (ax,) = figure(1, width=6, height=4)
    series = {"ticket": [(r.density, r.ticket.test_acc) for r in rounds]}
    for r in rounds:
        for name, result in r.controls.items():
            series.setdefault(name, []).append((r.density, result.test_acc))
    for name, points in series.items():
        points = [(d, a) for d, a in points if a is not None]
        if points:
            xs, ys = zip(*points)
            ax.plot([100 * x for x in xs], [100 * y for y in ys], marker="o", label=name)
    ax.set_xscale("log")
    ticks = sorted({round(100 * r.density, 1) for r in rounds}, reverse=True)
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.invert_xaxis()
    ax.set_xlabel("weights remaining (%)")
    ax.set_ylabel("test accuracy at best validation epoch (%)")
    ax.set_title(f"{summary.method}: {summary.model} on {summary.dataset} (seed {summary.seed})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def accuracy_over_training(summary: Summary, records: list[dict[str, Any]], path: str | Path) -> Path:
    """Test accuracy and density against the epochs trained so far, across all stages (one point per epoch)."""
    epochs = {}
    for record in records:  # an epoch re-run after a crash is logged again: the last record counts
        if record.get("event") == "epoch":
            epochs[(record["key"], record["epoch"])] = record
    points = list(epochs.values())
    fig, (accuracy_axis,) = figure(1, width=7, height=4)
    x = list(range(1, len(points) + 1))
    tested = [(i, p["test_acc"]) for i, p in zip(x, points) if p.get("test_acc") is not None]
    if tested:
        xs, ys = zip(*tested)
        accuracy_axis.plot(xs, [100 * y for y in ys], label="test accuracy", color="tab:blue")
    accuracy_axis.set_xlabel("epochs trained (all stages)")
    accuracy_axis.set_ylabel("test accuracy (%)")
    density_axis = accuracy_axis.twinx()
    density_axis.plot(x, [100 * p["density"] for p in points], label="density", color="tab:orange", linestyle="--")
    density_axis.set_ylabel("weights remaining (%)")
    for index in range(1, len(points)):
        if points[index]["key"] != points[index - 1]["key"]:
            accuracy_axis.axvline(index + 0.5, color="grey", alpha=0.3)
    accuracy_axis.set_title(f"{summary.method}: {summary.model} on {summary.dataset} (seed {summary.seed})")
    accuracy_axis.grid(True, alpha=0.3)
    fig.legend(loc="lower left", bbox_to_anchor=(0.1, 0.15))
    return save_figure(fig, path)
