"""The training loop: one *stage* (a contiguous piece of training on a fixed mask) at a time, resumable.

Hooks let methods act around the optimizer step (mask enforcement, regularizer gradients) and at epoch ends
(early stopping, snapshots, rewind capture, mask tracking). All randomness of an epoch is seeded from the run seed,
the round and the epoch, and a stage checkpoint holds the step counter, optimizer and hook states, so a stage
killed at any point and resumed from its last checkpoint finishes exactly as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from lth_runner import distributed, preemption
from lth_runner.config.schema import OptimConfig, TrainerConfig
from lth_runner.data.base import DataBundle
from lth_runner.errors import UserError
from lth_runner.sparse.enforce import MaskEnforcer
from lth_runner.sparse.prunable import unwrap
from lth_runner.training.optim import build_optimizer, load_state_keeping_hyperparameters, set_learning_rate
from lth_runner.training.schedules import learning_rate
from lth_runner.utils.io import save_torch_atomic
from lth_runner.utils.seeding import derive_seed


@dataclass
class Stage:
    """A piece of training. ``epochs`` is where it ends; the learning-rate schedule spans ``schedule_epochs``
    (default ``epochs``); it starts after ``start_step`` optimizer steps (late rewinding starts mid-schedule).
    ``weight_decay`` and ``batch_size`` override the run's for this stage (a pruning phase with its own recipe)."""

    key: str
    round: int
    phase: str
    epochs: int
    start_step: int = 0
    schedule_epochs: float | None = None
    density: float = 1.0
    weight_decay: float | None = None
    batch_size: int | None = None


@dataclass
class StageResult:
    """What a stage reports. One rule for every method: ``test_acc`` is the test accuracy at the epoch of best
    validation accuracy among the epochs whose network is final (``selection="best_val"``), or the last epoch's
    when there is no validation split (``selection="last_epoch"``); ``final_test_acc`` is always the last epoch's.
    Both are present even when per-epoch test evaluation is off (the stage then evaluates the test split once at
    its end, on its last and its best weights)."""

    key: str
    round: int
    phase: str
    density: float
    test_acc: float | None = None
    selection: str | None = None
    epochs_trained: int = 0
    final_epoch: int = 0
    stopped_early: bool = False
    best_epoch: int | None = None
    best_val_acc: float | None = None
    best_val_loss: float | None = None
    best_val_test_acc: float | None = None
    final_val_acc: float | None = None
    final_val_loss: float | None = None
    final_test_acc: float | None = None
    final_test_loss: float | None = None
    final_train_loss: float | None = None
    steps: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageResult:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def settle(self) -> StageResult:
        """Fill ``test_acc`` and ``selection`` from the best-validation and last-epoch figures (the rule above)."""
        if self.best_epoch is not None:
            self.test_acc, self.selection = self.best_val_test_acc, "best_val"
        else:
            self.test_acc, self.selection = self.final_test_acc, "last_epoch"
        return self


class Hook(Protocol):
    """Optional callbacks; implement only what you need (the trainer checks with ``hasattr``).

    ``log_fields`` adds (or overrides, e.g. ``density``) fields of every epoch record. A hook whose ``selectable``
    attribute is False keeps the epoch out of best-validation selection (the network is not final yet, e.g. while
    pruning events are still to come).

    A hook that keeps a perturbation on the weights between steps (NVRM's noise) takes it off in ``clean_weights``
    and puts it back in ``restore_weights``: the trainer calls the first before every evaluation and checkpoint and
    at the end of the stage, the second after them and after a resume, so evaluations and checkpoints see clean
    weights and a resumed stage trains on exactly the weights an uninterrupted one would.
    """

    def on_stage_start(self, trainer: Trainer) -> None: ...
    def before_step(self, trainer: Trainer) -> None: ...
    def after_step(self, trainer: Trainer) -> None: ...
    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> bool | None: ...
    def log_fields(self, trainer: Trainer) -> dict[str, Any]: ...
    def clean_weights(self, trainer: Trainer) -> None: ...
    def restore_weights(self, trainer: Trainer) -> None: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class EnforceMask:
    """Hook: keep pruned weights at zero (gradients masked before the step, weights re-masked after it)."""

    def __init__(self, enforcer: MaskEnforcer) -> None:
        self.enforcer = enforcer

    def on_stage_start(self, trainer: Trainer) -> None:
        self.enforcer.apply_to_weights()

    def before_step(self, trainer: Trainer) -> None:
        self.enforcer.apply_to_gradients()

    def after_step(self, trainer: Trainer) -> None:
        self.enforcer.apply_to_weights()


class Trainer:
    """Trains ``model`` on ``data`` stage by stage, logging every epoch to ``tracker``."""

    def __init__(
        self,
        model: nn.Module,
        data: DataBundle,
        *,
        optim: OptimConfig,
        trainer: TrainerConfig,
        seed: int = 0,
        tracker: Any = None,
        checkpoint_path: str | Path | None = None,
        forward: nn.Module | None = None,
    ) -> None:
        """``forward`` is the module training batches go through (a DistributedDataParallel wrapper of ``model``
        when several processes train together); evaluation always uses ``model`` itself."""
        self.model = model
        self.data = data
        self.optim_cfg = optim
        self.cfg = trainer
        self.seed = seed
        self.tracker = tracker
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.device = next(model.parameters()).device
        self.forward = forward or model
        self.eval_forward = model
        if trainer.compile:
            self.forward, self.eval_forward = torch.compile(self.forward), torch.compile(model)
        self.optimizer: torch.optim.Optimizer | None = None
        self.stage: Stage | None = None
        self.hooks: list[Any] = []
        self.batch: tuple[torch.Tensor, torch.Tensor] | None = None  # the training batch of the step in progress
        self.skip_step = False  # set by a ``before_step`` hook: this step takes no optimizer step (still counted)
        self.step = 0
        self.epoch = 0
        self.steps_per_epoch = data.num_train_batches()
        self.lr = optim.lr
        self._best_state: dict[str, torch.Tensor] | None = None
        self._partial_totals: torch.Tensor | None = None
        self._resume_rng: dict[str, torch.Tensor | None] | None = None
        self._result: StageResult | None = None
        self._keep_best_state = False
        self._progress = _Progress(tracker)

    # ------------------------------------------------------------------------------------------ public
    def fit(
        self,
        stage: Stage,
        hooks: Sequence[Any] = (),
        *,
        keep_best_state: bool = False,
        optimizer_state: dict[str, Any] | None = None,
    ) -> StageResult:
        """Train ``stage`` to its end (or until a hook stops it), resuming from the checkpoint if it has one.

        ``optimizer_state`` starts the stage with a saved optimizer state (rewinding momentum along with weights);
        the stage's own hyper-parameters (learning rate, weight decay, momentum, ...) are kept."""
        self.stage, self.hooks = stage, list(hooks)
        optim_cfg = self.optim_cfg
        if stage.weight_decay is not None:
            optim_cfg = dataclasses.replace(optim_cfg, weight_decay=stage.weight_decay)
        # a model may ask for parameter groups of its own (a relaxed mask's scores: own rate, no weight decay)
        groups = getattr(self.model, "optimizer_groups", None)
        self.optimizer = build_optimizer(groups() if groups is not None else self.model.parameters(), optim_cfg)
        self.steps_per_epoch = self.data.num_train_batches(stage.batch_size)
        self.step = stage.start_step
        result = StageResult(stage.key, stage.round, stage.phase, stage.density)
        self._best_state = None
        # Without per-epoch test evaluation the best weights are kept, to be tested once at the end.
        keep_best_state = keep_best_state or not self.cfg.eval_test
        self._result, self._keep_best_state = result, keep_best_state
        resumed = self._load_checkpoint(result)
        if not resumed:
            if optimizer_state is not None:
                load_state_keeping_hyperparameters(self.optimizer, optimizer_state)
            self._call("on_stage_start")
        else:
            self._call("restore_weights")  # a checkpoint holds clean weights: the stage resumes on perturbed ones
        self.epoch = self.step // self.steps_per_epoch
        self._log(
            "stage_start",
            round=stage.round,
            phase=stage.phase,
            key=stage.key,
            epochs=stage.epochs,
            start_epoch=self.epoch,
            steps_per_epoch=self.steps_per_epoch,
            density=stage.density,
            resumed=resumed,
        )
        started = time.perf_counter() - result.seconds
        batch_size = stage.batch_size or self.cfg.batch_size
        self._progress.start(stage, self.step, self.steps_per_epoch, batch_size, self.cfg.progress_seconds)
        stop = result.stopped_early
        while self.epoch < stage.epochs and not stop:
            epoch_start = time.perf_counter()
            train_loss, train_acc = self._train_epoch()
            self.epoch += 1
            record = self._epoch_record(train_loss, train_acc, time.perf_counter() - epoch_start, started)
            self._update_result(result, record, keep_best_state)
            # Every hook sees every epoch end, even when an earlier one already asks to stop.
            stop = distributed.any_rank(
                any([bool(self._call_one(h, "on_epoch_end", self, record)) for h in self.hooks])
            )
            result.stopped_early = stop and self.epoch < stage.epochs
            result.seconds = time.perf_counter() - started
            self._log("epoch", **record)
            if self.epoch % self.cfg.checkpoint_every == 0 or stop or self.epoch >= stage.epochs:
                self._save_checkpoint(result, keep_best_state)
        self._call("clean_weights")  # the stage hands on clean weights
        if not self.cfg.eval_test:
            self._test_at_end(result)
        result.final_epoch = self.epoch
        result.steps = self.step
        result.seconds = time.perf_counter() - started
        result.settle()
        self._log("stage_end", **result.to_dict())
        return result

    @torch.no_grad()
    def evaluate(self, split: str) -> tuple[float, float] | None:
        """Mean cross-entropy and accuracy on ``split`` (None when the split is empty), on clean weights."""
        if self.data.size(split) == 0:
            return None
        with self._clean_weights():
            return self._evaluate(split)

    def _evaluate(self, split: str) -> tuple[float, float]:
        self.model.eval()
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)
        rank, world = distributed.rank(), distributed.world_size()
        for x, y in self.data.eval_batches(split, rank=rank, world_size=world):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with self._autocast():
                logits = self.eval_forward(x)
            totals[0] += F.cross_entropy(logits.float(), y, reduction="sum")
            totals[1] += (logits.argmax(1) == y).sum()
            totals[2] += y.numel()
        distributed.all_reduce_sum(totals)
        loss_sum, correct, count = totals.tolist()
        return loss_sum / max(count, 1), correct / max(count, 1)

    def loss_and_backward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward and backward pass of a training batch: the loss (label smoothing, autocast) and logits;
        the gradients replace whatever the parameters held. Hooks that need another pass of the same batch at other
        weights (SAM) call this too, so that both passes compute the same loss."""
        with self._autocast():
            logits = self.forward(x)
            loss = F.cross_entropy(logits, y, label_smoothing=self.cfg.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return loss, logits

    @property
    def best_state(self) -> dict[str, torch.Tensor] | None:
        """Weights at the best validation accuracy of the stage (kept only with ``keep_best_state``)."""
        return self._best_state

    # ------------------------------------------------------------------------------------------ epoch
    def _train_epoch(self) -> tuple[float, float]:
        stage = self.stage
        assert stage is not None and self.optimizer is not None
        self.model.train()
        # One seed per (round, epoch): ticket and controls of a round see the same batches, and a resumed epoch
        # replays exactly the random draws (data order, augmentation, dropout) of the interrupted one.
        torch.manual_seed(derive_seed(self.seed, "torch", stage.round, stage.phase, self.epoch))
        if self._resume_rng is not None:  # mid-epoch: the draws the finished steps made (skipped below) are spent
            torch.set_rng_state(self._resume_rng["cpu"].cpu())  # loaded onto the training device; it lives on the CPU
            if self._resume_rng.get("cuda") is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state(self._resume_rng["cuda"].cpu(), self.device)
            self._resume_rng = None
        batches = self.data.train_batches(
            derive_seed(self.seed, "data", stage.round, self.epoch),
            skip=self.step - self.epoch * self.steps_per_epoch,
            rank=distributed.rank(),
            world_size=distributed.world_size(),
            batch_size=stage.batch_size,
        )
        before = [h for h in self.hooks if hasattr(h, "before_step")]
        after = [h for h in self.hooks if hasattr(h, "after_step")]
        schedule_epochs = stage.schedule_epochs or stage.epochs
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)
        if self._partial_totals is not None:  # resuming mid-epoch: the epoch's running sums so far
            totals += self._partial_totals.to(self.device)
            self._partial_totals = None
        several = distributed.world_size() > 1
        for x, y in batches:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            self.lr = learning_rate(
                self.step / self.steps_per_epoch, schedule_epochs, self.optim_cfg.lr, self.optim_cfg.scheduler
            )
            set_learning_rate(self.optimizer, self.lr)
            self.batch = (x, y)
            loss, logits = self.loss_and_backward(x, y)
            for hook in before:
                hook.before_step(self)
            if self.skip_step:  # a hook used this step for something else (RigL's mask update replaces it)
                self.skip_step = False
            else:
                if self.cfg.max_grad_norm:
                    nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
                self.optimizer.step()
            self.step += 1  # hooks see the number of optimizer steps taken so far
            for hook in after:
                hook.after_step(self)
            with torch.no_grad():
                totals[0] += loss.detach().double() * y.numel()
                totals[1] += (logits.argmax(1) == y).sum()
                totals[2] += y.numel()
            if distributed.any_rank(preemption.requested()) if several else preemption.requested():
                self._preempted(totals)
            self._progress.step(self.step, totals)
        distributed.all_reduce_sum(totals)
        loss_sum, correct, count = totals.tolist()
        if count and not math.isfinite(loss_sum):
            raise UserError(
                f"training diverged in {stage.key} epoch {self.epoch + 1} (loss {loss_sum / count}); "
                f"lower optim.lr or set trainer.max_grad_norm"
            )
        return loss_sum / max(count, 1), correct / max(count, 1)

    def _epoch_record(self, train_loss: float, train_acc: float, seconds: float, started: float) -> dict[str, Any]:
        stage = self.stage
        assert stage is not None
        val = self.evaluate("val")
        test = self.evaluate("test") if self.cfg.eval_test else None
        record = dict(
            key=stage.key,
            round=stage.round,
            phase=stage.phase,
            epoch=self.epoch,
            epochs=stage.epochs,
            step=self.step,
            train_loss=train_loss,
            train_acc=train_acc,
            val_loss=val[0] if val else None,
            val_acc=val[1] if val else None,
            test_loss=test[0] if test else None,
            test_acc=test[1] if test else None,
            density=stage.density,
            lr=self.lr,
            epoch_seconds=seconds,
            elapsed=time.perf_counter() - started,
        )
        for hook in self.hooks:
            fields = self._call_one(hook, "log_fields", self)
            if fields:
                record.update(fields)
        record["selectable"] = all(getattr(hook, "selectable", True) for hook in self.hooks)
        return record

    def _update_result(self, result: StageResult, record: dict[str, Any], keep_best_state: bool) -> None:
        result.epochs_trained += 1
        result.density = record["density"]
        result.final_train_loss = record["train_loss"]
        result.final_val_acc, result.final_val_loss = record["val_acc"], record["val_loss"]
        result.final_test_acc, result.final_test_loss = record["test_acc"], record["test_loss"]
        # Model selection looks at validation accuracy only, and only at epochs whose network is final (see Hook);
        # the test accuracy at that epoch is what gets reported.
        score = record["val_acc"]
        if not record["selectable"] or score is None:
            return
        if result.best_val_acc is None or score > result.best_val_acc:
            result.best_val_acc, result.best_val_loss = score, record["val_loss"]
            result.best_epoch, result.best_val_test_acc = record["epoch"], record["test_acc"]
            if keep_best_state:
                self._best_state = {k: v.detach().clone() for k, v in unwrap(self.model).state_dict().items()}

    def _test_at_end(self, result: StageResult) -> None:
        """Per-epoch test evaluation is off: test the last weights and, when it is another epoch, the best ones."""
        final = self.evaluate("test")
        if final is None:
            return
        result.final_test_loss, result.final_test_acc = final
        if result.best_epoch is None:
            return
        if result.best_epoch == self.epoch or self._best_state is None:
            result.best_val_test_acc = final[1]
            return
        model = unwrap(self.model)
        last = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self._best_state)
        best = self.evaluate("test")
        model.load_state_dict(last)
        result.best_val_test_acc = best[1] if best else None

    # ------------------------------------------------------------------------------------------ hooks
    def _call(self, name: str, *args: Any) -> None:
        for hook in self.hooks:
            self._call_one(hook, name, *(args or (self,)))

    @staticmethod
    def _call_one(hook: Any, name: str, *args: Any) -> Any:
        method = getattr(hook, name, None)
        return method(*args) if method is not None else None

    def _log(self, event: str, **fields: Any) -> None:
        if self.tracker is not None:
            self.tracker.log(event, **fields)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.cfg.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def _clean_weights(self) -> Any:
        """Weights without the perturbations hooks keep on them between steps, for an evaluation or a checkpoint."""
        self._call("clean_weights")
        try:
            yield
        finally:
            self._call("restore_weights")

    def _stateful_hooks(self) -> dict[str, Any]:
        """Hooks with state, keyed by class name and occurrence (stable when unrelated hooks come or go)."""
        keyed, seen = {}, {}
        for hook in self.hooks:
            if hasattr(hook, "state_dict") and hasattr(hook, "load_state_dict"):
                name = type(hook).__name__
                seen[name] = seen.get(name, 0) + 1
                keyed[f"{name}#{seen[name]}"] = hook
        return keyed

    # ------------------------------------------------------------------------------------------ checkpoints
    def _preempted(self, totals: torch.Tensor) -> None:
        """Save the exact step (with this epoch's running sums, this rank's share) and hand the signal on."""
        assert self._result is not None
        if distributed.world_size() > 1:
            totals = distributed.all_reduce_sum(totals.clone())
        self._save_checkpoint(self._result, self._keep_best_state, partial_totals=totals)
        saved = f"saved a checkpoint at step {self.step} of {self.stage.key}"
        self._log("interrupted", text=f"{preemption.describe(preemption.signum())}: {saved}")
        distributed.barrier()
        preemption.hand_over(distributed.is_main(), saved)

    def _save_checkpoint(
        self, result: StageResult, keep_best_state: bool, partial_totals: torch.Tensor | None = None
    ) -> None:
        if self.checkpoint_path is None or not distributed.is_main():
            return
        assert self.stage is not None and self.optimizer is not None
        with self._clean_weights():
            self._write_checkpoint(result, keep_best_state, partial_totals)

    def _write_checkpoint(
        self, result: StageResult, keep_best_state: bool, partial_totals: torch.Tensor | None
    ) -> None:
        payload = dict(
            key=self.stage.key,
            step=self.step,
            model=unwrap(self.model).state_dict(),
            optimizer=self.optimizer.state_dict(),
            hooks={key: hook.state_dict() for key, hook in self._stateful_hooks().items()},
            result=result.to_dict(),
            best_state=self._best_state if keep_best_state else None,
            partial_totals=None if partial_totals is None else partial_totals.cpu(),
            rng=None if partial_totals is None else self._rng_state(),
        )
        save_torch_atomic(self.checkpoint_path, payload)

    def _rng_state(self) -> dict[str, torch.Tensor | None]:
        """The global generators that dropout and other in-model draws use (data order has its own)."""
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return {"cpu": torch.get_rng_state(), "cuda": cuda}

    def _load_checkpoint(self, result: StageResult) -> bool:
        if self.checkpoint_path is None or not self.checkpoint_path.exists():
            return False
        payload = torch.load(self.checkpoint_path, map_location=self.device, weights_only=False)
        if payload.get("key") != self.stage.key:
            return False
        unwrap(self.model).load_state_dict(payload["model"])
        load_state_keeping_hyperparameters(self.optimizer, payload["optimizer"])
        self.step = payload["step"]
        hooks = self._stateful_hooks()
        for key, state in payload["hooks"].items():
            if key in hooks:
                hooks[key].load_state_dict(state)
        for name, value in payload["result"].items():
            setattr(result, name, value)
        self._best_state = payload.get("best_state")
        self._resume_rng = payload.get("rng")
        partial = payload.get("partial_totals")
        if partial is not None:  # a mid-epoch checkpoint: totals are global sums, one rank carries them on
            self._partial_totals = partial if distributed.is_main() else torch.zeros_like(partial)
        return True


def hooks_with(enforcer: MaskEnforcer | None, extra: Iterable[Any] = ()) -> list[Any]:
    """The usual hook list: mask enforcement first (so later hooks see masked gradients), then ``extra``. A hook
    in ``extra`` that enforces the mask itself (an :class:`EnforceMask` such as dynamic sparsity's, which reads
    the dense gradient before masking it) takes that first place instead; hooks enforcing other masks (EB's
    BatchNorm channels) stay where they are."""
    extra = list(extra)
    own = [h for h in extra if isinstance(h, EnforceMask) and enforcer is not None and h.enforcer is enforcer]
    if own:
        return own + [h for h in extra if h not in own]
    return ([EnforceMask(enforcer)] if enforcer is not None else []) + extra


class _Progress:
    """Progress within a stage, for the console only (never in metrics.jsonl): step, running loss, images/s and
    the time left, at most once a second; the console shows a line of it at least every ``progress_seconds``
    outside a terminal, and a step counter in one. Reading the running loss synchronises with the device, which
    is why it happens on this clock and not every step."""

    INTERVAL = 1.0

    def __init__(self, tracker: Any) -> None:
        self.tracker = tracker if tracker is not None and hasattr(tracker, "progress") else None
        self._next = math.inf

    def start(self, stage: Stage, step: int, steps_per_epoch: int, batch_size: int, every: float) -> None:
        if self.tracker is None:
            return
        self.stage, self.steps_per_epoch, self.batch_size, self.every = stage, steps_per_epoch, batch_size, every
        self.first_step, self.total = step, stage.epochs * steps_per_epoch
        self.started = time.monotonic()
        self._next = self.started + self.INTERVAL

    def step(self, step: int, totals: torch.Tensor) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.INTERVAL
        done, seconds = step - self.first_step, now - self.started
        rate = done / seconds if seconds > 0 else 0.0
        loss_sum, _, count = totals.tolist()
        self.tracker.progress(
            key=self.stage.key,
            round=self.stage.round,
            phase=self.stage.phase,
            step=step,
            steps=self.total,
            epoch=(step - 1) // self.steps_per_epoch + 1,
            epochs=self.stage.epochs,
            loss=loss_sum / count if count else None,
            images_per_second=rate * self.batch_size,
            eta_seconds=(self.total - step) / rate if rate > 0 else None,
            every=self.every,
        )
