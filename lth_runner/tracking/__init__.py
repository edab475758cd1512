"""Where results go: ``metrics.jsonl`` (the source of truth), the console, and later other sinks."""

from lth_runner.tracking.console import ConsoleReporter
from lth_runner.tracking.tracker import Tracker

__all__ = ["ConsoleReporter", "Tracker"]
