"""Console output: a rich display on a terminal (a step counter per stage, tables), plain lines otherwise.

One :class:`rich.console.Console` serves every line a run prints, so text printed while a progress bar is live
appears above it instead of tearing it. Outside a terminal (a log file, a SLURM job) each epoch is one line, and
within a long epoch a progress line (step, loss, images/s, time left) appears at least every
``trainer.progress_seconds`` seconds, so a job never looks stalled.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class ConsoleReporter:
    """A tracker sink that shows stages and epochs; ``mode`` is ``auto``, ``rich``, ``plain`` or ``none``."""

    def __init__(self, mode: str = "auto", stream: Any = None) -> None:
        self.stream = stream or sys.stdout
        if mode == "auto":
            mode = "rich" if getattr(self.stream, "isatty", lambda: False)() else "plain"
        self.mode = mode
        self._console = None
        self._progress = None
        self._task = None
        self._steps_per_epoch = 1
        self._last_line = time.monotonic()

    @property
    def console(self) -> Any:
        """The one rich Console of this reporter (rich mode)."""
        if self._console is None:
            from rich.console import Console

            self._console = Console(file=self.stream, highlight=False)
        return self._console

    # ---------------------------------------------------------------- sink interface
    def log(self, record: dict[str, Any]) -> None:
        handler = getattr(self, f"_on_{record['event']}", None)
        if handler is not None and self.mode != "none":
            handler(record)

    def progress(self, fields: dict[str, Any]) -> None:
        if self.mode == "rich" and self._progress is not None:
            self._progress.update(self._task, completed=fields["step"], info=self._progress_info(fields))
        elif self.mode == "plain" and time.monotonic() - self._last_line >= fields.get("every", 30.0):
            self.print(
                f"   [r{fields['round']} {fields['phase']}] epoch {fields['epoch']}/{fields['epochs']} "
                f"step {fields['step']}/{fields['steps']} {self._progress_info(fields)}"
            )

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
        self._steps_per_epoch = int(record.get("steps_per_epoch") or 1)
        if self.mode == "rich":
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._stop_progress()
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("steps {task.fields[info]}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(
                title,
                total=record["epochs"] * self._steps_per_epoch,
                completed=record.get("start_epoch", 0) * self._steps_per_epoch,
                info=detail,
            )
        else:
            self.print(f"-- {title} ({detail}, epochs {record.get('start_epoch', 0)}..{record['epochs']})")

    def _on_epoch(self, record: dict[str, Any]) -> None:
        info = (
            f"loss {record['train_loss']:.4f} train {_pct(record['train_acc'])}% "
            f"val {_pct(record.get('val_acc'))}% test {_pct(record.get('test_acc'))}% lr {record['lr']:.4g}"
        )
        if self.mode == "rich" and self._progress is not None:
            self._progress.update(
                self._task, completed=record["epoch"] * self._steps_per_epoch, info=f"epoch {record['epoch']} {info}"
            )
        else:
            self.print(
                f"   [r{record['round']} {record['phase']}] epoch {record['epoch']}/{record['epochs']} {info} "
                f"({record['epoch_seconds']:.1f}s)"
            )

    def _on_stage_end(self, record: dict[str, Any]) -> None:
        self._stop_progress()
        self.print(
            f"   done: test {_pct(record.get('test_acc'))}% ({_selection(record.get('selection'))}), "
            f"{_pct(record.get('final_test_acc'))}% at the last epoch, {record.get('epochs_trained')} epochs, "
            f"{record.get('seconds', 0):.1f}s"
        )

    def _on_prune(self, record: dict[str, Any]) -> None:
        step = f" at step {record['step']}" if record.get("step") is not None else ""
        self.print(
            f"pruned to density {_pct(record['density'])}% ({record['kept']:,} of {record['total']:,} weights){step}"
        )

    def _on_train_drops(self, record: dict[str, Any]) -> None:
        drops = ", ".join(
            f"{name} {100 * record[f'drop_{key}']:+.2f}"
            for name, key in (
                ("pruning", "after_pruning"),
                ("rewinding", "after_rewinding"),
                ("retraining", "after_retraining"),
            )
        )
        self.print(f"round {record['round']} train-accuracy drop (points) after {drops}")

    def _on_message(self, record: dict[str, Any]) -> None:
        self.print(record["text"])

    # ---------------------------------------------------------------- helpers
    @staticmethod
    def _progress_info(fields: dict[str, Any]) -> str:
        loss = "-" if fields.get("loss") is None else f"{fields['loss']:.4f}"
        return (
            f"loss {loss} {fields.get('images_per_second', 0):.0f} img/s, {_duration(fields.get('eta_seconds'))} left"
        )

    def print(self, text: str) -> None:
        if self.mode == "none":
            return
        self._last_line = time.monotonic()
        if self.mode == "rich":
            self.console.print(text, highlight=False, markup=False)
        else:
            print(text, file=self.stream, flush=True)

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if self.mode == "none":
            return
        if self.mode == "rich":
            from rich.table import Table

            table = Table(title=title)
            for column in columns:
                table.add_column(column, justify="right")
            for row in rows:
                table.add_row(*map(str, row))
            self.console.print(table)
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


def _selection(selection: str | None) -> str:
    return "at the best validation epoch" if selection == "best_val" else "at the last epoch (no validation split)"
