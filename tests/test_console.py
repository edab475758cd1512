"""Console output: progress within an epoch outside a terminal (a line at least every trainer.progress_seconds),
a step counter in a terminal, one rich Console for everything printed."""

from __future__ import annotations

import io

from lth_runner.config.schema import ModelConfig, OptimConfig, SyntheticConfig, TrainerConfig
from lth_runner.data import build_data
from lth_runner.models import build_model
from lth_runner.tracking import console as console_module
from lth_runner.tracking.console import ConsoleReporter
from lth_runner.tracking.tracker import Tracker
from lth_runner.training import Stage, Trainer
from lth_runner.training import trainer as trainer_module

PROGRESS = dict(key="round01/ticket", round=1, phase="ticket", step=5, steps=20, epoch=2, epochs=5, loss=0.5123,
                images_per_second=812.4, eta_seconds=95.0, every=30.0)  # fmt: skip


def test_outside_a_terminal_a_progress_line_appears_when_nothing_was_printed_for_a_while(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(console_module.time, "monotonic", lambda: clock[0])
    stream = io.StringIO()
    reporter = ConsoleReporter("plain", stream)
    reporter.print("an epoch line")
    clock[0] += 10
    reporter.progress(PROGRESS)
    assert stream.getvalue() == "an epoch line\n"  # 10 s of silence: nothing yet
    clock[0] += 25
    reporter.progress(PROGRESS)
    line = stream.getvalue().splitlines()[-1]
    assert line == "   [r1 ticket] epoch 2/5 step 5/20 loss 0.5123 812 img/s, 1:35 left"
    reporter.progress(PROGRESS)
    assert len(stream.getvalue().splitlines()) == 2  # and not again until another 30 s have passed


def test_in_a_terminal_the_bar_counts_steps_and_prints_through_one_console():
    stream = io.StringIO()
    reporter = ConsoleReporter("rich", stream)
    reporter.log({"event": "stage_start", "round": 1, "phase": "ticket", "epochs": 5, "start_epoch": 1,
                  "steps_per_epoch": 4, "density": 0.5})  # fmt: skip
    task = reporter._progress.tasks[0]
    assert (task.total, task.completed) == (20, 4)
    reporter.progress(PROGRESS)
    assert reporter._progress.tasks[0].completed == 5
    console = reporter.console
    reporter.print("a message while the bar is live")
    assert reporter.console is console and reporter._progress.console is console
    reporter.close()


def test_the_trainer_reports_progress_with_rate_and_time_left(monkeypatch):
    monkeypatch.setattr(trainer_module._Progress, "INTERVAL", 0.0)  # every step (the real clock: once a second)
    seen = []

    class Sink:
        def log(self, record):
            pass

        def progress(self, fields):
            seen.append(fields)

        def close(self, failed=False):
            pass

    data = build_data(
        SyntheticConfig(name="synthetic", shape=[4], train_size=32, test_size=8, dtype="float32", val_size=0),
        batch_size=8,
    )
    model = build_model(ModelConfig(arch="mlp", name="mlp", kwargs={"hidden": [4]}), (4,), 10, seed=0)
    trainer = Trainer(model, data, optim=OptimConfig(), trainer=TrainerConfig(epochs=2), tracker=Tracker([Sink()]))
    trainer.fit(Stage("s", 0, "x", 2))
    assert [f["step"] for f in seen] == list(range(1, 9)) and {f["steps"] for f in seen} == {8}
    assert [f["epoch"] for f in seen] == [1, 1, 1, 1, 2, 2, 2, 2]
    assert all(f["images_per_second"] > 0 and f["loss"] > 0 for f in seen) and seen[-1]["eta_seconds"] == 0
