"""Tables in the style of seed paper 000's Table 1: method x target sparsity, mean +- std of top-1 test accuracy.

For each (model, dataset): one row per method (variant), one column per target sparsity (in %), each cell the mean
and sample standard deviation over seeds of ``final.test_acc`` (the test accuracy at the best validation epoch among
epochs at the final density), in %. The best mean of each column is marked (bold in Markdown, ``best`` in CSV); ties
are all marked. A cost table gives the mean epochs trained (all stages) and wall seconds per run.

Rows follow Table 1's order (l1, lth, lth_iter, eb, dlth, dlth_iter, unilth, unidlth), then other methods
alphabetically. Runs that are not complete are left out unless ``include_incomplete`` is set; runs that have no
headline number yet are never averaged.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lth_runner.report.collect import RunRecord
from lth_runner.utils.io import write_text_atomic

PAPER_ORDER = ("l1", "lth", "lth_iter", "eb", "dlth", "dlth_iter", "unilth", "unidlth")
CSV_COLUMNS = ("model", "dataset", "method", "sparsity", "mean", "std", "n", "best")
COST_CSV_COLUMNS = ("model", "dataset", "method", "sparsity", "epochs_mean", "seconds_mean", "n")
_TIE = 1e-9


@dataclass
class Cell:
    """The runs of one (method, sparsity) in one table, and their statistics (accuracies in %)."""

    runs: list[RunRecord]
    best: bool = False

    @property
    def values(self) -> list[float]:
        return [100.0 * r.test_acc for r in self.runs if r.test_acc is not None]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation over seeds; None for a single seed."""
        return statistics.stdev(self.values) if len(self.values) >= 2 else None

    @property
    def epochs_mean(self) -> float | None:
        values = [r.epochs_total for r in self.runs if r.epochs_total is not None]
        return statistics.fmean(values) if values else None

    @property
    def seconds_mean(self) -> float | None:
        values = [r.seconds_total for r in self.runs if r.seconds_total is not None]
        return statistics.fmean(values) if values else None


@dataclass
class GroupTable:
    """One (model, dataset): rows (method labels in order) x columns (target sparsity in %)."""

    model: str
    dataset: str
    rows: list[str]
    sparsities: list[float]
    cells: dict[tuple[str, float], Cell] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return f"{self.model} on {self.dataset}"

    def cell(self, row: str, sparsity: float) -> Cell | None:
        return self.cells.get((row, sparsity))

    def seed_counts(self) -> set[int]:
        return {c.n for c in self.cells.values() if c.n}


def method_order(label: str) -> tuple[int, str]:
    """Sort key: Table 1's methods first in the paper's order, then the others alphabetically."""
    method = label.split(" [", 1)[0]
    index = PAPER_ORDER.index(method) if method in PAPER_ORDER else len(PAPER_ORDER)
    return index, label


def sparsity_label(pct: float) -> str:
    return f"{pct:g}%"


def build_tables(runs: Iterable[RunRecord], *, include_incomplete: bool = False) -> list[GroupTable]:
    """One table per (model, dataset), in order of first appearance; runs without a target sparsity are skipped,
    and so are slt_eps runs, which search a list of sparsities (their own table: :mod:`lth_runner.report.grid`)."""
    tables: dict[tuple[str, str], GroupTable] = {}
    for run in runs:
        if (not run.complete and not include_incomplete) or run.sparsity_pct is None or "slt" in run.summary.details:
            continue
        table = tables.setdefault((run.model, run.dataset), GroupTable(run.model, run.dataset, [], []))
        table.cells.setdefault((run.label, run.sparsity_pct), Cell([])).runs.append(run)
    for table in tables.values():
        table.rows = sorted({row for row, _ in table.cells}, key=method_order)
        table.sparsities = sorted({s for _, s in table.cells})
        for sparsity in table.sparsities:
            column = [c for (_, s), c in table.cells.items() if s == sparsity and c.mean is not None]
            if column:
                top = max(c.mean for c in column)
                for c in column:
                    c.best = c.mean >= top - _TIE
    return list(tables.values())


# ---------------------------------------------------------------------------------------------------- Markdown
def _fmt_acc(cell: Cell | None, *, show_n: bool, bold: bool = True) -> str:
    if cell is None or cell.mean is None:
        return "-"
    text = f"{cell.mean:.2f}" if cell.std is None else f"{cell.mean:.2f} ± {cell.std:.2f}"
    if cell.best and bold:
        text = f"**{text}**"
    if cell.n == 1 or show_n:
        text += f" (n={cell.n})"
    return text


def _fmt_cost(cell: Cell | None) -> str:
    if cell is None or (cell.epochs_mean is None and cell.seconds_mean is None):
        return "-"
    epochs = "-" if cell.epochs_mean is None else f"{cell.epochs_mean:.4g}"
    seconds = "-" if cell.seconds_mean is None else _fmt_seconds(cell.seconds_mean)
    return f"{epochs} ep / {seconds}"


def _fmt_seconds(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s" if seconds >= 10 else f"{seconds:.2g} s"


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "| --- |" + " ---: |" * (len(columns) - 1)]
    lines += ["| " + " | ".join(_escape(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def accuracy_markdown(table: GroupTable) -> str:
    counts = table.seed_counts()
    show_n = len(counts) > 1
    if len(counts) == 1:
        n = next(iter(counts))
        seeds = f"n = {n} seed{'s' if n != 1 else ''} per cell"
    else:
        seeds = "n = seeds per cell"
    caption = (
        f"Top-1 test accuracy (%) at the best validation epoch (`final.test_acc`): mean ± sample std over seeds, "
        f"{seeds}; best mean per sparsity in **bold**."
    )
    columns = ["method", *(sparsity_label(s) for s in table.sparsities)]
    rows = [[row, *(_fmt_acc(table.cell(row, s), show_n=show_n) for s in table.sparsities)] for row in table.rows]
    return caption + "\n\n" + markdown_table(columns, rows)


def cost_markdown(table: GroupTable) -> str:
    caption = "Training cost per run: mean epochs trained over all stages / mean wall time (`cost` in summary.json)."
    columns = ["method", *(sparsity_label(s) for s in table.sparsities)]
    rows = [[row, *(_fmt_cost(table.cell(row, s)) for s in table.sparsities)] for row in table.rows]
    return caption + "\n\n" + markdown_table(columns, rows)


def incomplete_markdown(runs: Sequence[RunRecord], *, included: bool, started: Sequence[str] = ()) -> str:
    """The runs that are not complete (listed whether or not the tables include them)."""
    pending = [r for r in runs if not r.complete]
    if not pending and not started:
        return ""
    note = (
        "included in the tables (--include-incomplete)"
        if included
        else "excluded from the tables; pass --include-incomplete to include them"
    )
    rows = [
        [
            f"`{r.rel}`",
            r.label,
            f"{r.model} / {r.dataset}",
            "-" if r.sparsity_pct is None else sparsity_label(r.sparsity_pct),
            "-" if r.seed is None else str(r.seed),
            r.status,
            "-" if r.test_acc is None else f"{100 * r.test_acc:.2f}",
        ]
        for r in pending
    ]
    rows += [[f"`{path}`", "-", "-", "-", "-", "no summary.json yet", "-"] for path in started]
    columns = ["run", "method", "model / dataset", "sparsity", "seed", "status", "test acc %"]
    return f"## Incomplete runs\n\n{len(rows)} run(s) not complete, {note}.\n\n" + markdown_table(columns, rows)


def duplicate_notes(tables: Sequence[GroupTable]) -> list[str]:
    """Cells where one seed appears more than once (the same run found twice, or a repeated run)."""
    notes = []
    for table in tables:
        for (row, sparsity), cell in table.cells.items():
            seeds = [r.seed for r in cell.runs]
            repeated = sorted({s for s in seeds if s is not None and seeds.count(s) > 1})
            if repeated:
                where = ", ".join(f"`{r.rel}`" for r in cell.runs if r.seed in repeated)
                notes.append(
                    f"{table.title}, {row} at {sparsity_label(sparsity)}: seed(s) {', '.join(map(str, repeated))} "
                    f"appear more than once ({where}); every run is averaged"
                )
    return notes


def report_markdown(
    tables: Sequence[GroupTable],
    runs: Sequence[RunRecord],
    *,
    source: str,
    include_incomplete: bool = False,
    started: Sequence[str] = (),
) -> str:
    complete = sum(r.complete for r in runs)
    parts = [
        "# lth-runner report",
        f"Source: `{source}`: {len(runs)} run(s), {complete} complete, {len(runs) - complete} not complete.",
    ]
    if not tables:
        parts.append(
            "No run can be tabulated"
            + ("" if include_incomplete else " (no complete run; --include-incomplete includes the others)")
            + "."
        )
    for table in tables:
        parts += [f"## {table.title}", accuracy_markdown(table), cost_markdown(table)]
    pending = incomplete_markdown(runs, included=include_incomplete, started=started)
    if pending:
        parts.append(pending)
    notes = duplicate_notes(tables)
    notes += [f"`{r.rel}` has no target sparsity and is not tabulated" for r in runs if r.sparsity_pct is None]
    if notes:
        parts.append("## Notes\n\n" + "\n".join(f"- {n}" for n in notes))
    return "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------------- CSV
def _num(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return ""
    return f"{value:.6f}".rstrip("0").rstrip(".")


def accuracy_csv(tables: Sequence[GroupTable]) -> str:
    """One row per (model, dataset, method, sparsity); mean, std and sparsity in %, std empty for a single seed."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for table in tables:
        for row in table.rows:
            for sparsity in table.sparsities:
                cell = table.cell(row, sparsity)
                if cell is None or cell.n == 0:
                    continue
                writer.writerow(
                    [
                        table.model,
                        table.dataset,
                        row,
                        _num(sparsity),
                        _num(cell.mean),
                        _num(cell.std),
                        cell.n,
                        "true" if cell.best else "false",
                    ]
                )
    return buffer.getvalue()


def cost_csv(tables: Sequence[GroupTable]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COST_CSV_COLUMNS)
    for table in tables:
        for row in table.rows:
            for sparsity in table.sparsities:
                cell = table.cell(row, sparsity)
                if cell is None:
                    continue
                writer.writerow(
                    [
                        table.model,
                        table.dataset,
                        row,
                        _num(sparsity),
                        _num(cell.epochs_mean),
                        _num(cell.seconds_mean),
                        len(cell.runs),
                    ]
                )
    return buffer.getvalue()


def write_tables(tables: Sequence[GroupTable], markdown: str, out: Path, formats: Sequence[str]) -> list[Path]:
    """Write ``table.md`` and/or ``table.csv`` + ``cost.csv`` (atomically); returns the paths written."""
    written = []
    if "md" in formats:
        write_text_atomic(out / "table.md", markdown)
        written.append(out / "table.md")
    if "csv" in formats:
        write_text_atomic(out / "table.csv", accuracy_csv(tables))
        write_text_atomic(out / "cost.csv", cost_csv(tables))
        written += [out / "table.csv", out / "cost.csv"]
    return written
