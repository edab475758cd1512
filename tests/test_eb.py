"""Early-Bird tickets (``method=eb``): the detector on hand-made masks, channel selection, and end-to-end runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from torch import nn

import lth_runner.methods.eb  # noqa: F401  (registers method=eb before configs are composed)
from lth_runner.config.compose import compose_config
from lth_runner.config.schema import ModelConfig
from lth_runner.config.validate import build_run_config
from lth_runner.errors import ConfigError
from lth_runner.methods.eb import (
    BatchNormL1,
    EarlyBirdDetector,
    channel_groups,
    fixed_detection_epoch,
    select_channels,
)
from lth_runner.models import build_model
from lth_runner.session import run_experiment
from lth_runner.sparse import Mask, kept_count, prunable_parameters, prune_to_density
from lth_runner.training.trainer import Trainer
from lth_runner.utils.io import read_jsonl
from lth_runner.utils.seeding import derive_seed
from tests.conftest import REPO, without_timings

BASE = [
    "model=mlp",
    "dataset=mnist1d",
    "method=eb",
    "dataset.num_samples=1000",
    "logger.console=none",
    "logger.plots=false",
    "model.hidden=[32,32]",
    "trainer.batch_size=64",
]
PRUNABLE = 40 * 32 + 32 * 32 + 32 * 10
CONV = [  # ResNet-20 at width 4 on 3x16x16 random images: 196 BatchNorm channels
    "method=eb",
    "method.granularity=channel",
    "model=resnet20",
    "model.width=4",
    "dataset=synthetic",
    "dataset.shape=[3,16,16]",
    "dataset.train_size=128",
    "dataset.test_size=64",
    "trainer.batch_size=64",
    "logger.console=none",
    "logger.plots=false",
]


def run(tmp_path, data_root, *overrides, base=BASE):
    cfg = build_run_config(compose_config([*base, f"paths.data_root={data_root}", *overrides]))
    return run_experiment(cfg, tmp_path).to_dict(), tmp_path


def epoch_records(out, key):
    return [r for r in read_jsonl(out / "metrics.jsonl") if r["event"] == "epoch" and r["key"] == key]


def masks(*rows):
    return [Mask({"w": torch.tensor(row, dtype=torch.bool)}) for row in rows]


# ------------------------------------------------------------------------------------------------ units
def test_the_detector_waits_for_a_full_fifo_then_needs_every_distance_under_the_threshold():
    detector = EarlyBirdDetector(window=3, threshold=0.25)
    m0, m1, m2, m3, m4, m5 = masks([1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 1, 0], [1, 0, 0, 1], [1, 0, 0, 1], [1, 0, 0, 1])
    assert not detector.push(m0, 0) and detector.distances is None
    assert not detector.push(m1, 1) and detector.distances is None  # 2 of 3 masks: never emerged
    assert not detector.push(m2, 2)
    assert detector.distances == [0.5, 0.0]  # m2 vs m0 differ at 2 of 4 entries, m2 == m1
    assert not detector.push(m3, 3)
    assert detector.epochs == [1, 2, 3] and detector.distances == [0.5, 0.5]  # m0 left the FIFO
    assert not detector.push(m4, 4) and detector.distances == [0.5, 0.0]  # m2 still in the window
    assert detector.push(m5, 5) and detector.distances == [0.0, 0.0] and detector.max_distance == 0.0

    # a distance equal to the threshold counts as close enough: 2 of 8 entries = 0.25
    boundary = EarlyBirdDetector(window=2, threshold=0.25)
    a, b = masks([1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 1, 0, 0, 0])
    boundary.push(a, 0)
    assert boundary.push(b, 1) and boundary.distances == [0.25]
    strict = EarlyBirdDetector(window=2, threshold=0.24)
    strict.push(a, 0)
    assert not strict.push(b, 1)


def test_the_detector_state_round_trips():
    detector = EarlyBirdDetector(window=3, threshold=0.1)
    for epoch, mask in enumerate(masks([1, 0, 0, 1], [1, 1, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0])):
        detector.push(mask, epoch)
    restored = EarlyBirdDetector(window=3, threshold=0.1)
    restored.load_state_dict(detector.state_dict())
    assert restored.epochs == [1, 2, 3] and restored.distances == detector.distances == [0.5, 0.0]
    assert restored.masks == detector.masks
    (last,) = masks([0, 1, 1, 0])
    assert restored.push(last, 4) == detector.push(last, 4)


def test_the_fixed_detection_epoch_is_the_floor_of_the_fraction_and_at_least_one():
    assert fixed_detection_epoch(0.125, 300) == 37  # seed 000: "37 epochs (1/8 of the total epochs)"
    assert fixed_detection_epoch(0.125, 16) == 2
    assert fixed_detection_epoch(0.125, 4) == 1
    assert fixed_detection_epoch(0.29, 100) == 29  # no floating-point residue: 0.29 * 100 = 28.999999999999996
    assert fixed_detection_epoch(1.0, 10) == 10


def test_channel_selection_uses_one_global_threshold_and_never_empties_a_layer():
    scores = {"a": torch.tensor([0.9, 0.1, 0.5]), "b": torch.tensor([0.2, 0.05])}
    # top 3 of 5 by one threshold: 0.9, 0.5, 0.2
    assert select_channels(scores, 0.6).layer_kept() == {"a": 2, "b": 1}
    # top 2 would be 0.9 and 0.5 and empty b: b keeps its best (0.2) and a's weakest kept channel (0.5) gives way
    mask = select_channels(scores, 0.4)
    assert mask["a"].tolist() == [True, False, False] and mask["b"].tolist() == [True, False]
    # fewer channels than layers: one per layer
    assert select_channels(scores, 0.2).layer_kept() == {"a": 1, "b": 1}
    layerwise = select_channels(scores, 0.5, scope="layerwise")  # kept_count(3, .5) = 2, kept_count(2, .5) = 1
    assert layerwise["a"].tolist() == [True, False, True] and layerwise["b"].tolist() == [True, False]


def test_channel_groups_pair_each_batchnorm_with_the_layer_that_feeds_it():
    model = build_model(ModelConfig(arch="resnet20", name="resnet20", kwargs={"width": 4}), (3, 8, 8), 10, seed=0)
    params = prunable_parameters(model)
    groups = {g.bn: g.producer for g in channel_groups(model, params, (3, 8, 8))}
    assert len(groups) == 21  # stem + 9 blocks x 2 + 2 projection shortcuts
    assert groups["bn1"] == "conv1.weight"
    assert groups["layer1.0.bn2"] == "layer1.0.conv2.weight"
    assert groups["layer3.0.shortcut.1"] == "layer3.0.shortcut.0.weight"
    # an excluded layer's BatchNorm is not a candidate
    params = prunable_parameters(model, exclude_first=True)
    assert "bn1" not in {g.bn for g in channel_groups(model, params, (3, 8, 8))}
    vgg = build_model(ModelConfig(arch="vgg11", name="vgg11"), (3, 8, 8), 10, seed=0)
    vgg_groups = channel_groups(vgg, prunable_parameters(vgg), (3, 8, 8))
    assert [(g.bn, g.producer, g.channels) for g in vgg_groups][:2] == [
        ("features.bn1", "features.conv1.weight", 64),
        ("features.bn2", "features.conv2.weight", 128),
    ]


def test_the_batchnorm_l1_subgradient_is_s_times_the_sign_of_the_scale():
    bn = nn.BatchNorm1d(4)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, -2.0, 0.0, 3.0]))
    bn.weight.grad = torch.zeros(4)
    BatchNormL1([bn.weight], 1e-4).before_step(None)
    assert torch.equal(bn.weight.grad, torch.tensor([1e-4, -1e-4, 0.0, 1e-4]))  # sign(0) = 0: no push at zero
    bn.bias.grad = None
    BatchNormL1([bn.weight], 1e-4).before_step(None)
    assert torch.equal(bn.weight.grad, torch.tensor([2e-4, -2e-4, 0.0, 2e-4]))  # added to the gradient


# ------------------------------------------------------------------------------------------------ runs
def test_eb_detection_on_a_tiny_run(tmp_path, data_root):
    summary, out = run(tmp_path, data_root, "trainer.epochs=20", "method.retrain_epochs=2")
    eb = summary["details"]["eb"]
    assert eb["found"] and eb["criterion_met"] and eb["threshold"] == 0.1 and eb["window"] == 5
    search = epoch_records(out, "search/dense")
    assert [r["epoch"] for r in search] == list(range(1, eb["epoch"] + 1))  # the search stopped at the detection
    assert eb["epoch"] >= 5  # with this seed the masks are still moving when the FIFO first fills (epoch 4)
    at = search[-1]
    assert at["eb_max_distance"] == eb["max_distance"] == max(eb["distances"]) <= 0.1
    assert at["eb_distances"] == eb["distances"] and len(eb["distances"]) == 4
    for record in search[:-1]:  # every earlier epoch: FIFO not yet full (epochs 1-3), or some distance too large
        if record["epoch"] < 4:
            assert record["eb_max_distance"] is None
        else:
            assert record["eb_max_distance"] > 0.1

    mask = Mask.load(out / "masks/eb.pt")
    assert mask.num_kept() == summary["final"]["kept"] == kept_count(PRUNABLE, 0.2) == 525
    assert summary["final"]["density"] == 525 / PRUNABLE == eb["weight_density"]
    assert [r["epoch"] for r in epoch_records(out, "retrain/ticket")] == [1, 2]
    assert summary["cost"]["epochs_per_stage"] == {"search/dense": eb["epoch"], "retrain/ticket": 2}
    assert summary["cost"]["ticket_found_epoch"] == eb["epoch"]
    assert summary["status"] == "complete" and summary["method"] == "eb" and summary["prunable_weights"] == PRUNABLE
    assert {"test_acc", "final_test_acc", "best_val_test_acc"} <= set(summary["final"])
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["eb_search.pt", "last.pt"]  # EB weights freed


def test_fixed_epoch_mode_draws_the_ticket_at_one_eighth_from_the_eb_weights(tmp_path, data_root):
    summary, out = run(
        tmp_path,
        data_root,
        "trainer.epochs=16",
        "method.detect=fixed_epoch",
        "method.retrain_epochs=1",
        "trainer.keep_round_weights=true",
    )
    eb = summary["details"]["eb"]
    assert eb["epoch"] == 2 and eb["found"] and not eb["criterion_met"] and eb["distances"] is None
    assert summary["cost"]["epochs_per_stage"] == {"search/dense": 2, "retrain/ticket": 1}
    assert summary["stages"]["search/dense"]["stopped_early"]
    # the ticket is the magnitude mask of the weights after 2 epochs, which are the weights the search kept
    weights = torch.load(out / "checkpoints/search_dense.final.pt", weights_only=True)
    expected = prune_to_density({n: weights[n].abs() for n in Mask.load(out / "masks/eb.pt")}, 0.2)
    assert Mask.load(out / "masks/eb.pt") == expected


def test_without_a_detection_the_last_mask_is_used(tmp_path, data_root):
    summary, out = run(tmp_path, data_root, "trainer.epochs=3", "method.retrain_epochs=1")  # the FIFO never fills
    eb = summary["details"]["eb"]
    assert not eb["found"] and eb["epoch"] == 3 and eb["distances"] is None
    assert summary["stages"]["search/dense"]["epochs_trained"] == 3
    assert not summary["stages"]["search/dense"]["stopped_early"]


@pytest.mark.parametrize("retrain_from", ["eb", "init", "reinit"])
def test_retraining_starts_from_the_masked_eb_weights_or_the_initialisation(
    tmp_path, data_root, monkeypatch, retrain_from
):
    starts = {}

    class Capture:
        def on_stage_start(self, trainer):
            starts[trainer.stage.key] = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    original = Trainer.fit

    def fit(self, stage, hooks=(), **kwargs):
        return original(self, stage, [*hooks, Capture()], **kwargs)  # after EnforceMask: sees the masked start

    monkeypatch.setattr(Trainer, "fit", fit)
    summary, out = run(
        tmp_path,
        data_root,
        "trainer.epochs=6",
        "method.detect=fixed_epoch",
        "method.fixed_fraction=0.5",
        "method.retrain_epochs=1",
        f"method.retrain_from={retrain_from}",
        "trainer.keep_round_weights=true",
    )
    mask = Mask.load(out / "masks/eb.pt")
    if retrain_from == "eb":
        source = torch.load(out / "checkpoints/search_dense.final.pt", weights_only=True)
    elif retrain_from == "reinit":
        fresh = build_model(
            ModelConfig(arch="mlp", name="mlp", kwargs={"hidden": [32, 32]}),
            (40,),
            10,
            seed=derive_seed(0, "model", "reinit"),
        )
        source = fresh.state_dict()
    else:
        source = starts["search/dense"]
    start = starts["retrain/ticket"]
    for name, value in start.items():
        expected = source[name] * mask[name] if name in mask else source[name]
        assert torch.equal(value, expected), name
    eb_weights = torch.load(out / "checkpoints/search_dense.final.pt", weights_only=True)
    assert not torch.equal(starts["search/dense"]["fc1.weight"], eb_weights["fc1.weight"])  # the two differ


def test_the_channel_variant_masks_filters_and_batchnorm_and_keeps_every_layer(tmp_path, data_root):
    summary, out = run(tmp_path, data_root, "trainer.epochs=5", "method.retrain_epochs=2", "sparsity=80", base=CONV)
    eb = summary["details"]["eb"]
    channels = Mask.load(out / "masks/eb_channels.pt")
    assert channels.numel() == eb["channels_total"] == 196
    assert channels.num_kept() == eb["channels_kept"] == kept_count(196, 0.2) == 39
    assert eb["channel_density"] == 39 / 196
    assert all(kept >= 1 for kept in channels.layer_kept().values())  # no BatchNorm layer is empty

    weights = Mask.load(out / "masks/eb.pt")
    assert summary["final"]["kept"] == weights.num_kept() and summary["final"]["density"] == eb["weight_density"]
    model = torch.load(out / "checkpoints/last.pt", weights_only=False)["model"]  # the retrained network
    for bn, keep in channels.items():
        conv = bn[:-1] + "0" if bn.endswith("shortcut.1") else bn.replace("bn", "conv")
        filters = model[f"{conv}.weight"]
        assert torch.equal(weights[f"{conv}.weight"], keep.view(-1, 1, 1, 1).expand_as(filters))
        assert not filters[~keep].any(), conv  # pruned filters are zero
        assert filters[keep].flatten(1).abs().sum(1).gt(0).all(), conv  # kept ones are not
        assert not model[f"{bn}.weight"][~keep].any() and not model[f"{bn}.bias"][~keep].any(), bn
    assert weights["fc.weight"].all()  # the classifier feeds no BatchNorm: untouched


def test_the_channel_variant_needs_batchnorm(tmp_path, data_root):
    with pytest.raises(ConfigError, match="method.granularity='channel' is not accepted"):
        run(tmp_path, data_root, "method.granularity=channel")


# ------------------------------------------------------------------------------------------------ resume
def cli(run_dir, data_root, *extra, env=None):
    command = [
        sys.executable,
        "-m",
        "lth_runner.train",
        *BASE,
        "trainer.epochs=12",
        "method.retrain_epochs=3",
        "logger.console=plain",
        "trainer.num_threads=1",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]
    env = dict(os.environ, LTH_DATA_ROOT=str(data_root), PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, data_root):
    """An uninterrupted CLI run (12 steps per epoch; the ticket emerges after epoch 4)."""
    run_dir = tmp_path_factory.mktemp("eb_reference")
    assert cli(run_dir, data_root, "plugins=[lth_runner.methods.eb]").returncode == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["details"]["eb"]["found"] and summary["details"]["eb"]["epoch"] >= 5
    return run_dir, summary


def killed_and_resumed(run_dir, data_root, kill_at):
    killed = cli(
        run_dir, data_root, "plugins=[lth_runner.methods.eb,tests.fault_injection]", env={"LTH_KILL_AT": kill_at}
    )
    assert killed.returncode == -signal.SIGKILL
    summary = run_dir / "summary.json"  # written after the search: absent when killed while searching
    assert not summary.exists() or json.loads(summary.read_text())["status"] == "running"
    resumed = cli(run_dir, data_root, "plugins=[lth_runner.methods.eb]")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "(resumed)" in resumed.stdout
    return read_jsonl(run_dir / "metrics.jsonl")


def test_a_run_killed_while_retraining_resumes_without_searching_again(tmp_path, data_root, reference_run):
    reference_dir, reference = reference_run
    records = killed_and_resumed(tmp_path, data_root, "retrain/ticket:30")  # mid-way through the third epoch
    assert without_timings(json.loads((tmp_path / "summary.json").read_text())) == without_timings(reference)
    assert Mask.load(tmp_path / "masks/eb.pt") == Mask.load(reference_dir / "masks/eb.pt")
    starts = [r for r in records if r["event"] == "stage_start"]
    assert [r["resumed"] for r in starts if r["key"] == "search/dense"] == [False]  # searched once
    restarts = [r for r in starts if r["key"] == "retrain/ticket"]
    assert [r["resumed"] for r in restarts] == [False, True] and restarts[1]["start_epoch"] == 2
    searched = [r for r in records if r["event"] == "epoch" and r["key"] == "search/dense"]
    assert len(searched) == reference["details"]["eb"]["epoch"]
    assert sum(r["event"] == "prune" for r in records) == 1


@pytest.mark.slow
def test_a_run_killed_while_searching_resumes_with_its_mask_history(tmp_path, data_root, reference_run):
    reference_dir, reference = reference_run
    records = killed_and_resumed(tmp_path, data_root, "search/dense:40")  # in epoch 4, before the detection
    assert without_timings(json.loads((tmp_path / "summary.json").read_text())) == without_timings(reference)
    assert Mask.load(tmp_path / "masks/eb.pt") == Mask.load(reference_dir / "masks/eb.pt")
    restarts = [r for r in records if r["event"] == "stage_start" and r["key"] == "search/dense"]
    assert [r["resumed"] for r in restarts] == [False, True] and restarts[1]["start_epoch"] == 3
    # the last record of each epoch (a re-run epoch is logged again) carries the reference's distances: the FIFO
    # of masks drawn before the kill was restored from the checkpoint, not redrawn
    last = {r["epoch"]: r["eb_distances"] for r in records if r["event"] == "epoch" and r["key"] == "search/dense"}
    assert last == {r["epoch"]: r["eb_distances"] for r in epoch_records(reference_dir, "search/dense")}
    assert sum(r["event"] == "prune" for r in records) == 1
