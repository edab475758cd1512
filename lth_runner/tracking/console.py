"""Console output: a rich progress bar on a terminal, one plain line per epoch otherwise."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


class ConsoleReporter:
    """A tracker sink that shows stages and epochs; ``mode`` is ``auto``, ``rich``, ``plain`` or ``none``."""

    def __init__(self, mode: str = "auto", stream: Any = None) -> None:
        self.stream = stream or sys.stdout
        if mode == "auto":
            mode = "rich" if getattr(self.stream, "isatty", lambda: False)() else "plain"
        self.mode = mode
        self._progress = None
        self._task = None

    # ---------------------------------------------------------------- sink interface
    def log(self, record: dict[str, Any]) -> None:
        handler = getattr(self, f"_on_{record['event']}", None)
        if handler is not None and self.mode != "none":
            handler(record)

    def close(self, failed: bool = False) -> None:
        self._stop_progress()

    # ---------------------------------------------------------------- events
    def _on_run_start(self, record: dict[str, Any]) -> None:
        self.print(
            f"lth-run {record.get('method')} | {record.get('model')} on {record.get('data')} | "
            f"output: {record.get('output_dir')}" + (" (resumed)" if record.get("resumed") else "")
        )

    def _on_stage_start(self, record: dict[str, Any]) -> None:
        title = f"round {record['round']} {record['phase']}"
        detail = f"density {_pct(record.get('density'))}%"
        if self.mode == "rich":
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._stop_progress()
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(
                title, total=record["epochs"], completed=record.get("start_epoch", 0), info=detail
            )
        else:
            self.print(f"-- {title} ({detail}, epochs {record.get('start_epoch', 0)}..{record['epochs']})")

    def _on_epoch(self, record: dict[str, Any]) -> None:
        info = (
            f"loss {record['train_loss']:.4f} train {_pct(record['train_acc'])}% "
            f"val {_pct(record.get('val_acc'))}% test {_pct(record.get('test_acc'))}% lr {record['lr']:.4g}"
        )
        if self.mode == "rich" and self._progress is not None:
            self._progress.update(self._task, completed=record["epoch"], info=info)
        else:
            self.print(
                f"   [r{record['round']} {record['phase']}] epoch {record['epoch']}/{record['epochs']} {info} "
                f"({record['epoch_seconds']:.1f}s)"
            )

    def _on_stage_end(self, record: dict[str, Any]) -> None:
        self._stop_progress()
        self.print(
            f"   done: test {_pct(record.get('final_test_acc'))}% (at best val: "
            f"{_pct(record.get('best_val_test_acc'))}%), {record.get('epochs_trained')} epochs, "
            f"{record.get('seconds', 0):.1f}s"
        )

    def _on_prune(self, record: dict[str, Any]) -> None:
        self.print(f"pruned to density {_pct(record['density'])}% ({record['kept']:,} of {record['total']:,} weights)")

    def _on_message(self, record: dict[str, Any]) -> None:
        self.print(record["text"])

    # ---------------------------------------------------------------- helpers
    def print(self, text: str) -> None:
        if self.mode == "none":
            return
        if self.mode == "rich":
            from rich.console import Console

            Console(file=self.stream).print(text, highlight=False, markup=False)
        else:
            print(text, file=self.stream, flush=True)

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if self.mode == "none":
            return
        if self.mode == "rich":
            from rich.console import Console
            from rich.table import Table

            table = Table(title=title)
            for column in columns:
                table.add_column(column, justify="right")
            for row in rows:
                table.add_row(*map(str, row))
            Console(file=self.stream).print(table)
            return
        widths = [max([len(str(c)), *(len(str(r[i])) for r in rows)]) for i, c in enumerate(columns)]
        self.print(title)
        self.print("  ".join(str(c).rjust(w) for c, w in zip(columns, widths)))
        for row in rows:
            self.print("  ".join(str(v).rjust(w) for v, w in zip(row, widths)))

    def _stop_progress(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
