"""Paper 003's sparsity x epsilon table from a sweep of ``method=slt_eps`` over ``method.eps``.

Every slt_eps run holds one column of the table in ``details.slt.grid`` (one row per searched sparsity, plus the
unpruned perturbed network at ``s = 0``). :func:`slt_grids` gathers them per model and dataset, averaging the test
accuracy over seeds; the report prints the table (and the best pruned accuracy per epsilon, the paper's last row)
and draws ``slt_eps_grid.png``.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lth_runner.report.collect import RunRecord


@dataclass
class Grid:
    title: str
    cells: dict[tuple[float, float], list[float]] = field(default_factory=dict)  # (sparsity, eps) -> test accs

    @property
    def sparsities(self) -> list[float]:
        return sorted({s for s, _ in self.cells})

    @property
    def epsilons(self) -> list[float]:
        return sorted({e for _, e in self.cells})

    def mean(self, s: float, eps: float) -> float | None:
        values = self.cells.get((s, eps))
        return statistics.mean(values) if values else None

    def best_pruned(self, eps: float) -> float | None:
        values = [self.mean(s, eps) for s in self.sparsities if s > 0]
        values = [v for v in values if v is not None]
        return max(values) if values else None


def slt_grids(runs: Sequence[RunRecord]) -> list[Grid]:
    grids: dict[str, Grid] = {}
    for run in runs:
        section = run.summary.details.get("slt") if run.complete else None
        if not section:
            continue
        title = f"{run.model} / {run.dataset}, eps {section.get('eps_mode', 'absolute')}"
        grid = grids.setdefault(title, Grid(title))
        for row in section.get("grid", []):
            if row.get("test_acc") is not None:
                grid.cells.setdefault((float(row["sparsity"]), float(section["eps"])), []).append(100 * row["test_acc"])
    return list(grids.values())


def grid_markdown(grids: Sequence[Grid]) -> str:
    parts = []
    for grid in grids:
        eps = grid.epsilons
        lines = [
            f"## Strong tickets with epsilon-perturbation: {grid.title} (test accuracy %, mean over seeds)",
            "",
            "| s \\ eps | " + " | ".join(f"{e:g}" for e in eps) + " |",
            "|---" * (len(eps) + 1) + "|",
        ]
        for s in grid.sparsities:
            cells = [grid.mean(s, e) for e in eps]
            lines.append(f"| {s:g} | " + " | ".join("" if c is None else f"{c:.2f}" for c in cells) + " |")
        best = [grid.best_pruned(e) for e in eps]
        lines.append("| best pruned | " + " | ".join("" if b is None else f"{b:.2f}" for b in best) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def grid_figure(grids: Sequence[Grid], path: str | Path) -> Path | None:
    if not grids:
        return None
    from lth_runner.plots import figure, save_figure

    fig, axes = figure(len(grids), width=6.5, height=4.8)
    for ax, grid in zip(axes, grids):
        eps, sparsities = grid.epsilons, grid.sparsities
        values = [[grid.mean(s, e) if grid.mean(s, e) is not None else float("nan") for e in eps] for s in sparsities]
        image = ax.imshow(values, aspect="auto", cmap="viridis", origin="upper")
        ax.set_xticks(range(len(eps)), [f"{e:g}" for e in eps], rotation=45)
        ax.set_yticks(range(len(sparsities)), [f"{s:g}" for s in sparsities])
        for i, row in enumerate(values):
            for j, v in enumerate(row):
                if v == v:  # not NaN
                    ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7, color="white")
        ax.set_xlabel("epsilon")
        ax.set_ylabel("sparsity s (pruned fraction)")
        ax.set_title(grid.title)
        fig.colorbar(image, ax=ax, label="test accuracy %")
    return save_figure(fig, Path(path))
