"""``lth-run-report PATH``: tables and figures from finished runs (one run, a sweep, or any tree of runs).

Writes to ``PATH/report`` (or ``--out``): ``table.md`` (per model and dataset, method x target sparsity, mean ± std
of the test accuracy over seeds, in the style of seed paper 000's Table 1, plus a cost table and the runs that are
not complete), ``table.csv`` and ``cost.csv``, ``accuracy_vs_epoch.png`` (Fig. 3 style), ``accuracy_vs_sparsity.png``
and ``regularization_laws.png`` (Fig. 2); for ``method=slt_eps`` sweeps, paper 003's sparsity x epsilon table and
``slt_eps_grid.png``. Library use::

    from lth_runner.report import build_report
    report = build_report("outputs/sweeps/2025-01-01_00-00-00")
    print(report.markdown)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lth_runner.errors import UserError
from lth_runner.report.collect import ReportError, RunRecord, collect_runs, dedupe_epochs, started_without_summary
from lth_runner.report.grid import grid_figure, grid_markdown, slt_grids
from lth_runner.report.tables import GroupTable, build_tables, report_markdown, write_tables

FORMATS = ("md", "csv")

__all__ = [
    "FORMATS",
    "GroupTable",
    "Report",
    "ReportError",
    "RunRecord",
    "build_report",
    "build_tables",
    "collect_runs",
    "dedupe_epochs",
    "main",
]


@dataclass
class Report:
    runs: list[RunRecord]
    tables: list[GroupTable]
    markdown: str
    out: Path
    written: list[Path] = field(default_factory=list)


def parse_formats(text: str | Sequence[str]) -> list[str]:
    items = text.split(",") if isinstance(text, str) else list(text)
    formats = [f.strip().lower() for f in items if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        shown = ",".join(unknown) if unknown else repr(text)
        raise ReportError(f"--format={shown} is not accepted: expected a comma-separated list of {', '.join(FORMATS)}")
    return formats


def build_report(
    path: str | Path,
    out: str | Path | None = None,
    *,
    include_incomplete: bool = False,
    formats: str | Sequence[str] = FORMATS,
    figures: bool = True,
) -> Report:
    """Collect the runs under ``path``, write the tables (``formats``) and figures to ``out`` (default
    ``path/report``), and return what was found and written."""
    formats = parse_formats(formats)
    root = Path(path)
    runs = collect_runs(root)
    started = [p.relative_to(root).as_posix() or "." for p in started_without_summary(root)]
    tables = build_tables(runs, include_incomplete=include_incomplete)
    markdown = report_markdown(tables, runs, source=str(root), include_incomplete=include_incomplete, started=started)
    grids = slt_grids(runs)
    if grids:
        markdown = markdown.rstrip("\n") + "\n\n" + grid_markdown(grids) + "\n"
    out_dir = Path(out) if out is not None else root / "report"
    report = Report(runs, tables, markdown, out_dir)
    report.written += write_tables(tables, markdown, out_dir, formats)
    if figures:
        from lth_runner.report.figures import write_figures

        shown = [r for r in runs if r.complete or include_incomplete]
        report.written += write_figures(shown, tables, out_dir)
        drawn = grid_figure(grids, out_dir / "slt_eps_grid.png")
        report.written += [drawn] if drawn is not None else []
    return report


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lth-run-report",
        description="Tables (method x sparsity, mean ± std over seeds) and figures from lth-run results.",
    )
    parser.add_argument("path", help="a run directory, a multirun sweep directory, or any tree holding runs")
    parser.add_argument("--out", help="where to write the report (default: PATH/report)")
    parser.add_argument(
        "--include-incomplete", action="store_true", help="tabulate runs whose status is not complete too"
    )
    parser.add_argument("--format", default="md,csv", help="table formats to write: md, csv or md,csv (default)")
    return parser


def _print_markdown(text: str) -> None:
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.markdown import Markdown

        Console().print(Markdown(text))
    else:
        print(text, end="" if text.endswith("\n") else "\n", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        report = build_report(
            args.path, args.out, include_incomplete=args.include_incomplete, formats=args.format, figures=True
        )
    except (UserError, OSError) as err:
        message = " ".join(str(err).split())
        print(f"lth-run-report: error: {message}", file=sys.stderr, flush=True)
        return 2
    _print_markdown(report.markdown)
    print(f"wrote {len(report.written)} file(s) to {report.out}:")
    for path in report.written:
        print(f"  {path}")
    return 0
