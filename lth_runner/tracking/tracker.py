"""The tracker fans events out to sinks. Every event is one JSON object in ``metrics.jsonl``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Protocol

from lth_runner import distributed
from lth_runner.utils.io import append_jsonl


class Sink(Protocol):
    def log(self, record: dict[str, Any]) -> None: ...
    def close(self, failed: bool = False) -> None: ...


class JsonlSink:
    """Appends each event to a JSON-lines file, flushed and fsynced so a crash loses at most the event in flight."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def log(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        append_jsonl(self.path, record)

    def close(self, failed: bool = False) -> None:
        pass


class Tracker:
    """Logs events (dicts with an ``event`` field) to every sink; only the main process logs."""

    def __init__(self, sinks: list[Sink] | None = None) -> None:
        self.sinks = list(sinks or [])
        self.enabled = distributed.is_main()

    def log(self, event: str, **fields: Any) -> dict[str, Any]:
        record = {"event": event, "time": round(time.time(), 3), **fields}
        if self.enabled:
            for sink in self.sinks:
                sink.log(record)
        return record

    def progress(self, **fields: Any) -> None:
        """Transient progress within a stage: shown by sinks that display it (the console), recorded nowhere."""
        if self.enabled:
            for sink in self.sinks:
                show = getattr(sink, "progress", None)
                if show is not None:
                    show(fields)

    def close(self, failed: bool = False) -> None:
        for sink in self.sinks:
            sink.close(failed=failed)
