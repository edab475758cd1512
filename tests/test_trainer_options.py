"""Optional trainer paths end to end: bf16 autocast with channels_last, torch.compile, label smoothing, Adam."""

from __future__ import annotations

import pytest
import torch

from lth_runner.config.compose import compose_config
from lth_runner.config.validate import build_run_config
from lth_runner.session import run_experiment
from lth_runner.sparse import Mask
from lth_runner.utils.io import read_jsonl

SMALL_IMAGES = [
    "model=conv2",
    "dataset=synthetic",
    "dataset.shape=[3,16,16]",
    "dataset.train_size=256",
    "dataset.test_size=64",
    "method=lth",
    "sparsity=80",
    "trainer.epochs=1",
    "trainer.batch_size=64",
    "logger.console=none",
    "logger.plots=false",
]


def run(tmp_path, *overrides):
    summary = run_experiment(build_run_config(compose_config([*SMALL_IMAGES, *overrides])), tmp_path).to_dict()
    state = torch.load(tmp_path / "checkpoints/last.pt", weights_only=False)["model"]
    mask = Mask.load(tmp_path / "masks/round_01.pt")
    for name, keep in mask.items():
        assert torch.count_nonzero(state[name][~keep]) == 0, name
    return summary


def test_bf16_autocast_with_channels_last_keeps_masks_exact(tmp_path):
    summary = run(tmp_path, "trainer.precision=bf16", "trainer.channels_last=true", "dataset.augment=true")
    assert summary["status"] == "complete" and summary["rounds"][1]["density"] == pytest.approx(0.2, abs=1e-4)


def test_adam_with_label_smoothing_warmup_and_clipping(tmp_path):
    summary = run(
        tmp_path,
        "optim=adamw",
        "trainer.label_smoothing=0.1",
        "optim.scheduler.name=cosine",
        "optim.scheduler.warmup_epochs=0.5",
        "trainer.max_grad_norm=1.0",
    )
    assert summary["status"] == "complete"


@pytest.mark.slow
def test_torch_compile(tmp_path):
    summary = run(tmp_path, "trainer.compile=true")
    assert summary["status"] == "complete"


def test_every_method_reports_a_test_accuracy_without_a_validation_split(tmp_path):
    """One rule: the test accuracy at the best validation epoch, or the last epoch's without a validation split
    (the bug this guards against left LTH's final.test_acc null with dataset.val_size=0, and the report dropped it)."""
    summary = run(tmp_path, "method=lth", "dataset.val_size=0")
    final = summary["final"]
    assert final["selection"] == "last_epoch" and final["test_acc"] == final["final_test_acc"] is not None
    assert all(r["ticket"]["test_acc"] is not None for r in summary["rounds"])


def test_without_per_epoch_test_evaluation_the_stage_tests_its_last_and_best_weights_once(tmp_path):
    summary = run(tmp_path, "method=lth", "trainer.eval_test=false", "trainer.epochs=4")
    records = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r["event"] == "epoch"]
    assert all(r["test_acc"] is None for r in records)  # no test accuracy during training
    for stage in summary["stages"].values():
        assert stage["test_acc"] is not None and stage["final_test_acc"] is not None
        assert stage["selection"] == "best_val"
    final = summary["final"]
    assert final["test_acc"] == final["best_val_test_acc"]
