"""Trainer building blocks: early stopping, exact rewinding, and resume determinism of the stage loop."""

from __future__ import annotations

import signal

import pytest
import torch
from torch import nn

from lth_runner.config.schema import ModelConfig, OptimConfig, SchedulerConfig, SyntheticConfig, TrainerConfig
from lth_runner.data import build_data
from lth_runner.models import build_model
from lth_runner.sparse import Mask, MaskEnforcer, prunable_parameters
from lth_runner.training import EarlyStopping, Snapshot, SnapshotBuffer, Stage, Trainer, hooks_with


def test_early_stopping_counts_patience_on_validation_loss():
    stopper = EarlyStopping(patience=2)
    decisions = [stopper.update(v, epoch) for epoch, v in enumerate([1.0, 0.9, 0.95, 0.91, 0.8])]
    assert decisions == [False, False, False, True, True]
    assert stopper.best == 0.9 and stopper.best_epoch == 1 and stopper.stopped_epoch == 3
    restored = EarlyStopping(patience=2)
    restored.load_state_dict(stopper.state_dict())
    assert restored.state_dict() == stopper.state_dict()
    with pytest.raises(ValueError):
        EarlyStopping(patience=0)


def bn_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))


def step(model, optimizer, seed):
    x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    optimizer.zero_grad()
    model(x).sum().backward()
    optimizer.step()


def test_rewinding_restores_weights_and_batchnorm_buffers_exactly():
    model = bn_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    buffer = SnapshotBuffer(capacity=3, include_optimizer=True)
    states = {}
    for epoch in range(5):
        step(model, optimizer, epoch)
        buffer.push(model, epoch=epoch, step=epoch + 1, optimizer=optimizer)
        states[epoch] = {k: v.clone() for k, v in model.state_dict().items()}
    assert buffer.epochs() == [2, 3, 4]  # ring buffer keeps the newest three
    snapshot = buffer.back(2)
    assert snapshot.epoch == 2
    snapshot.restore(model, optimizer)
    for key, value in model.state_dict().items():
        assert torch.equal(value, states[2][key]), key  # includes running_mean/var and num_batches_tracked
    assert model[1].num_batches_tracked.item() == 3
    with pytest.raises(KeyError):
        buffer.back(3)
    restored = SnapshotBuffer(3)
    restored.load_state_dict(buffer.state_dict())
    assert restored.epochs() == [2, 3, 4] and torch.equal(
        restored.at(4).model["1.running_var"], states[4]["1.running_var"]
    )
    assert isinstance(Snapshot.from_state_dict(snapshot.state_dict()), Snapshot)


class Interrupt(Exception):
    pass


class InterruptAt:
    """Raises once the trainer reaches ``step`` (mid-epoch), like a preemption."""

    def __init__(self, step: int) -> None:
        self.step = step

    def after_step(self, trainer) -> None:
        if trainer.step == self.step:
            raise Interrupt


def make_trainer(checkpoint, seed=3):
    data = build_data(
        SyntheticConfig(
            name="synthetic", shape=[3, 8, 8], train_size=200, test_size=50, augment=True, crop_padding=2, val_size=0.2
        ),
        batch_size=32,
        eval_batch_size=64,
    )
    model = build_model(
        ModelConfig(arch="mlp", name="mlp", kwargs={"hidden": [32], "dropout": 0.2}),
        data.spec.input_shape,
        data.spec.num_classes,
        seed=0,
    )
    params = prunable_parameters(model)
    enforcer = MaskEnforcer(
        params, Mask.random({n: p.shape for n, p in params.items()}, 0.5, generator=torch.Generator().manual_seed(0))
    )
    optim = OptimConfig(lr=0.05, momentum=0.9, weight_decay=1e-4, scheduler=SchedulerConfig(name="cosine"))
    trainer = Trainer(model, data, optim=optim, trainer=TrainerConfig(epochs=4), seed=seed, checkpoint_path=checkpoint)
    return trainer, enforcer


def test_a_stage_interrupted_mid_epoch_resumes_to_the_identical_result(tmp_path):
    stage = Stage("round01/ticket", 1, "ticket", epochs=4)
    straight, enforcer = make_trainer(tmp_path / "a.pt")
    expected = straight.fit(stage, hooks_with(enforcer))
    # 5 batches per epoch: interrupt in the middle of the third epoch, after the checkpoint of the second
    interrupted, enforcer = make_trainer(tmp_path / "b.pt")
    with pytest.raises(Interrupt):
        interrupted.fit(stage, hooks_with(enforcer, [InterruptAt(step=12)]))
    resumed, enforcer = make_trainer(tmp_path / "b.pt")
    result = resumed.fit(stage, hooks_with(enforcer))
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert result.final_test_acc == expected.final_test_acc and result.final_train_loss == expected.final_train_loss
    assert result.epochs_trained == 4 and result.steps == 20


class SignalAt:
    """Records a preemption warning (SIGUSR2) once the trainer reaches ``step``, as the signal handler would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def after_step(self, trainer) -> None:
        if trainer.step == self.step:
            from lth_runner import preemption

            preemption._state["signum"] = signal.SIGUSR2


def test_a_signal_mid_epoch_checkpoints_the_exact_step_and_the_resume_replays_dropout(tmp_path):
    """The checkpoint a signal leaves is mid-epoch: the resumed epoch skips the finished batches, and the dropout
    draws those batches made are restored, not drawn again (the model has dropout 0.2)."""
    from lth_runner import preemption

    stage = Stage("round01/ticket", 1, "ticket", epochs=4)
    straight, enforcer = make_trainer(tmp_path / "a.pt")
    expected = straight.fit(stage, hooks_with(enforcer))
    interrupted, enforcer = make_trainer(tmp_path / "b.pt")
    try:
        with pytest.raises(preemption.Interrupted):
            interrupted.fit(stage, hooks_with(enforcer, [SignalAt(step=12)]))
    finally:
        preemption._state["signum"] = None
    assert torch.load(tmp_path / "b.pt", weights_only=False)["step"] == 12
    resumed, enforcer = make_trainer(tmp_path / "b.pt")
    result = resumed.fit(stage, hooks_with(enforcer))
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert result.final_train_loss == expected.final_train_loss


def test_late_rewinding_starts_mid_schedule_and_mid_epoch():
    trainer, enforcer = make_trainer(None)
    result = trainer.fit(Stage("round01/ticket", 1, "ticket", epochs=2, start_step=7), hooks_with(enforcer))
    assert result.steps == 10 and result.epochs_trained == 1  # the partial second epoch finishes the schedule


def test_the_run_seed_changes_the_training_stream():
    losses = []
    for seed in (3, 3, 4):
        trainer, enforcer = make_trainer(None, seed=seed)
        losses.append(trainer.fit(Stage("k", 1, "ticket", epochs=1), hooks_with(enforcer)).final_train_loss)
    assert losses[0] == losses[1] and losses[0] != losses[2]


def test_early_stop_and_snapshot_hooks_rewind_to_an_exact_earlier_epoch():
    """Random labels: validation loss soon stops improving; the buffer then holds the states of earlier epochs."""
    from lth_runner.training import EarlyStop, KeepSnapshots

    trainer, enforcer = make_trainer(None)
    buffer = SnapshotBuffer(capacity=3)
    stop = EarlyStop(patience=1)
    result = trainer.fit(Stage("s", 0, "dense", epochs=30), hooks_with(enforcer, [stop, KeepSnapshots(buffer)]))
    assert result.stopped_early and result.epochs_trained == stop.stopper.stopped_epoch < 30
    assert buffer.epochs()[-1] == result.epochs_trained
    rewind_epoch = result.epochs_trained - 2
    # an identical run stopped after `rewind_epoch` epochs ends in exactly the buffered state
    replay, enforcer = make_trainer(None)
    replay.fit(Stage("s", 0, "dense", epochs=rewind_epoch, schedule_epochs=30), hooks_with(enforcer))
    for key, value in replay.model.state_dict().items():
        assert torch.equal(value, buffer.back(2).model[key]), key
