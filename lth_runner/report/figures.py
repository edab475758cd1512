"""Figures: test accuracy against epoch (seed paper 000, Fig. 3), accuracy against sparsity, and the four
regularization laws (Fig. 2). matplotlib is imported only inside the drawing functions, with the Agg canvas (no
pyplot, so no global backend state is touched).

Accuracy against epoch: the x axis counts the epochs a run trained, over all its stages, in the order they appear in
``metrics.jsonl`` (so it ends at ``cost.epochs_total``); the curve is the mean over seeds at each such epoch, the band
the min-max over seeds, and short ticks at the bottom mark where the density changed (between two epochs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lth_runner.plots import figure, save_figure
from lth_runner.report.collect import RunRecord
from lth_runner.report.tables import GroupTable, method_order, sparsity_label

REGULARIZATION_LAWS = ("linear", "loglaw", "explaw", "tanlaw")


@dataclass
class EpochSeries:
    """One run's test accuracy (%) at each epoch it trained, numbered 1..N across stages."""

    epochs: list[int]
    test_acc: list[float | None]
    density_changes: list[float]  # x positions (between epochs) where the density changed


def epoch_series(run: RunRecord) -> EpochSeries:
    records = run.epoch_records()
    accs = [None if r.get("test_acc") is None else 100.0 * float(r["test_acc"]) for r in records]
    densities = [r.get("density") for r in records]
    changes = [
        i + 0.5
        for i in range(1, len(records))
        if densities[i] is not None
        and densities[i - 1] is not None
        and not math.isclose(densities[i], densities[i - 1])
    ]
    return EpochSeries(list(range(1, len(records) + 1)), accs, changes)


def mean_band(series: Sequence[EpochSeries]) -> tuple[list[int], list[float], list[float], list[float]]:
    """Per epoch index: mean, min and max over the runs that have a test accuracy there."""
    length = max((len(s.epochs) for s in series), default=0)
    xs, means, lows, highs = [], [], [], []
    for i in range(length):
        values = [s.test_acc[i] for s in series if i < len(s.test_acc) and s.test_acc[i] is not None]
        if values:
            xs.append(i + 1)
            means.append(sum(values) / len(values))
            lows.append(min(values))
            highs.append(max(values))
    return xs, means, lows, highs


# ---------------------------------------------------------------------------------------------------- helpers
def _colors(labels: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    palette = colormaps["tab10"].colors
    return {label: palette[i % len(palette)] for i, label in enumerate(labels)}


# ---------------------------------------------------------------------------------------------------- figures
def accuracy_vs_epoch(runs: Sequence[RunRecord], path: str | Path) -> Path | None:
    """One panel per (model, dataset, sparsity), one curve per method; None when no run has epoch records."""
    panels: dict[tuple[str, str, float], dict[str, list[EpochSeries]]] = {}
    for run in runs:
        if run.sparsity_pct is None:
            continue
        series = epoch_series(run)
        if any(a is not None for a in series.test_acc):
            panel = panels.setdefault((run.model, run.dataset, run.sparsity_pct), {})
            panel.setdefault(run.label, []).append(series)
    if not panels:
        return None
    keys = sorted(panels, key=lambda k: (k[0], k[1], k[2]))
    colors = _colors(sorted({label for p in panels.values() for label in p}, key=method_order))
    from matplotlib.ticker import MaxNLocator

    fig, axes = figure(len(keys))
    for ax, key in zip(axes, keys):
        model, dataset, sparsity = key
        for label in sorted(panels[key], key=method_order):
            group = panels[key][label]
            xs, means, lows, highs = mean_band(group)
            color = colors[label]
            marker = "o" if len(xs) <= 40 else None
            ax.plot(xs, means, color=color, lw=1.6, marker=marker, ms=3, label=f"{label} (n={len(group)})")
            if len(group) > 1:
                ax.fill_between(xs, lows, highs, color=color, alpha=0.2, lw=0)
            for x in sorted({x for s in group for x in s.density_changes}):
                ax.axvline(x, ymin=0.0, ymax=0.04, color=color, lw=1.5)
        ax.set_title(f"{model} / {dataset}, sparsity {sparsity_label(sparsity)}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch (cumulative over all stages)")
        ax.set_ylabel("top-1 test accuracy (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle("Test accuracy vs training epoch: mean over seeds, min-max shaded; bottom ticks: density changes")
    return save_figure(fig, Path(path))


def accuracy_vs_sparsity(tables: Sequence[GroupTable], path: str | Path) -> Path | None:
    """``final.test_acc`` mean +- std against target sparsity, one panel per (model, dataset)."""
    tables = [t for t in tables if any(c.mean is not None for c in t.cells.values())]
    if not tables:
        return None
    colors = _colors(sorted({row for t in tables for row in t.rows}, key=method_order))
    fig, axes = figure(len(tables))
    for ax, table in zip(axes, tables):
        for row in table.rows:
            points = [(s, table.cell(row, s)) for s in table.sparsities]
            points = [(s, c) for s, c in points if c is not None and c.mean is not None]
            if not points:
                continue
            ax.errorbar(
                [s for s, _ in points],
                [c.mean for _, c in points],
                yerr=[c.std or 0.0 for _, c in points],
                marker="o",
                capsize=3,
                color=colors[row],
                label=row,
            )
        ax.set_xticks(table.sparsities)
        ax.set_xticklabels([f"{s:g}" for s in table.sparsities])
        ax.set_title(f"{table.model} / {table.dataset}")
        ax.set_xlabel("target sparsity (%)")
        ax.set_ylabel("top-1 test accuracy at best val. epoch (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle("Final test accuracy vs sparsity (mean ± sample std over seeds)")
    return save_figure(fig, Path(path))


def regularization_laws(path: str | Path, *, points: int = 201) -> Path:
    """The four growing-regularization laws over phi / E in [0, 1] with R_ceil = 1 (seed paper 000, Fig. 2)."""
    from lth_runner.sparse.laws import penalty_coefficient

    xs = [i / (points - 1) for i in range(points)]
    fig, (ax,) = figure(1, width=6.0, height=4.5)
    for law in REGULARIZATION_LAWS:
        ax.plot(xs, [penalty_coefficient(law, x, 1.0, 1.0) for x in xs], lw=1.8, label=law)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("training progress φ / E")
    ax.set_ylabel("penalty coefficient R / R_ceil")
    ax.set_title("Growing-regularization laws (R_ceil = 1)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return save_figure(fig, Path(path))


def write_figures(runs: Sequence[RunRecord], tables: Sequence[GroupTable], out: Path) -> list[Path]:
    """The three figures (the two accuracy figures only when there is something to draw); the paths written."""
    written = [
        accuracy_vs_epoch(runs, out / "accuracy_vs_epoch.png"),
        accuracy_vs_sparsity(tables, out / "accuracy_vs_sparsity.png"),
        regularization_laws(out / "regularization_laws.png"),
    ]
    return [p for p in written if p is not None]
