"""A run's session: its output directory, data, tracker, and the bookkeeping every method shares (stages that
resume, masks that are computed once, prune records, summaries, controls).

Output layout (all writes atomic)::

    <output_dir>/
      config.yaml            the validated configuration
      metrics.jsonl          one JSON object per event (epochs, stages, prunes); an epoch cut short by a crash
                             after it was logged is logged again when it is re-run: the last record per
                             (key, epoch) is the one that counts
      summary.json           the typed summary (lth_runner.summary), rewritten after every stage
      state.json             completed stages and the configuration fingerprint (what a resumed run skips)
      masks/<name>.pt        every mask a method decided (round_XX.pt per round), reusable by any method
      checkpoints/last.pt    the stage in progress (model, optimizer, step, hook states)
      checkpoints/*.pt       final weights of stages a later round needs; the rewind point
      plots/                 accuracy plot
      wandb/, wandb_run_id, wandb_state.json   Weights & Biases files, when it is on (lth_runner.tracking.wandb_sink)

Re-running with the same output directory resumes: finished stages are read back from ``state.json``, the stage in
progress continues from ``checkpoints/last.pt``, and a mask is never recomputed once saved. Nothing is written
before the configuration, the resume check and the data have passed (:meth:`RunContext.begin`), so a run that
fails on bad input leaves no files behind.

The process-wide set-up (device, process group, torch flags) happens once, in :func:`prepare_process`, and
Weights & Biases is attached by :func:`run_experiment`; the context's constructor only reads.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from lth_runner import distributed, preemption
from lth_runner.config.schema import OptimConfig, RunConfig, is_result_neutral
from lth_runner.data import DataBundle, build_data
from lth_runner.errors import UserError
from lth_runner.models import build_model
from lth_runner.sparse.criteria import ScoreContext
from lth_runner.sparse.enforce import MaskEnforcer
from lth_runner.sparse.mask import Mask
from lth_runner.sparse.prunable import from_sparsity_config, unwrap
from lth_runner.summary import Summary, build_summary
from lth_runner.tracking import ConsoleReporter, Tracker
from lth_runner.tracking.tracker import JsonlSink
from lth_runner.training.flatness import flatness_enabled, flatness_hooks
from lth_runner.training.trainer import Stage, StageResult, Trainer, hooks_with
from lth_runner.utils.dicts import flatten
from lth_runner.utils.io import read_jsonl, save_torch_atomic, write_json_atomic, write_text_atomic
from lth_runner.utils.seeding import derive_seed


class RunContext:
    """Everything a method needs to train stages, decide masks and report, for one output directory."""

    def __init__(
        self,
        cfg: RunConfig,
        output_dir: str | Path,
        *,
        device: torch.device | str = "cpu",
        console: ConsoleReporter | None = None,
    ) -> None:
        self.cfg = cfg
        self.output_dir = Path(output_dir)
        self.device = torch.device(device)
        self.state_path = self.output_dir / "state.json"
        self.state: dict[str, Any] = json.loads(self.state_path.read_text()) if self.state_path.exists() else {}
        self.state.setdefault("completed", {})
        self.resumed = holds_results(self.output_dir)  # a saved mask alone is a result a re-run would reuse
        self.console = console or ConsoleReporter(cfg.logger.console)
        self.tracker = Tracker([JsonlSink(self.output_dir / "metrics.jsonl"), self.console])
        self._ddp: dict[int, nn.Module] = {}
        self._data: DataBundle | None = None

    def check_resume(self) -> None:
        """Refuse to resume a directory whose run computed something else (result-neutral keys may differ)."""
        fingerprint = resume_fingerprint(self.cfg)
        previous = self.state.get("fingerprint")
        if self.resumed and previous is not None and previous != fingerprint:
            changed = sorted(
                k
                for k in set(previous) | set(fingerprint)
                if previous.get(k) != fingerprint.get(k) and not self._added_since(k, previous)
            )
        else:
            changed = []
        if changed:
            shown = ", ".join(f"{k}: {previous.get(k)!r} -> {fingerprint.get(k)!r}" for k in changed[:3])
            more = f" (+{len(changed) - 3} more)" if len(changed) > 3 else ""
            raise UserError(
                f"{self.output_dir} holds a run with a different configuration ({shown}{more}); "
                f"re-run with the same settings to resume, or choose another hydra.run.dir"
            )

    def _added_since(self, key: str, previous: dict[str, Any]) -> bool:
        """An option that did not exist when the run started, left at its default: the run computed what the
        default computes (new options default to the old behaviour), so it does not stop a resume."""
        if key in previous:
            return False
        parent, _, name = key.rpartition(".")
        owner: Any = self.cfg
        for part in parent.split(".") if parent else []:
            owner = getattr(owner, part, None)
        fields = {f.name: f for f in dataclasses.fields(owner)} if dataclasses.is_dataclass(owner) else {}
        spec = fields.get(name)
        if spec is None:
            return False
        if spec.default is not dataclasses.MISSING:
            default = spec.default
        elif spec.default_factory is not dataclasses.MISSING:
            default = spec.default_factory()
        else:
            return False
        return getattr(owner, name) == default

    def begin(self) -> None:
        """Write the configuration and the resume fingerprint: from here on the directory holds a run."""
        self.state["fingerprint"] = resume_fingerprint(self.cfg)
        if distributed.is_main():
            write_text_atomic(self.output_dir / "config.yaml", config_yaml(self.cfg))
            self._save_state()

    # ----------------------------------------------------------------------------------------- resources
    @property
    def checkpoint_path(self) -> Path:
        return self.output_dir / "checkpoints" / "last.pt"

    @property
    def data(self) -> DataBundle:
        if self._data is None:
            trainer = self.cfg.trainer
            self._data = build_data(
                self.cfg.dataset,
                data_root=self.cfg.paths.data_root,
                batch_size=trainer.batch_size,
                eval_batch_size=trainer.eval_batch_size,
                device=self.device,
                channels_last=trainer.channels_last,
            )
        return self._data

    def new_model(self, *labels: object) -> nn.Module:
        """A freshly initialised model; its initialisation is determined by the run seed and ``labels``."""
        spec = self.data.spec
        model = build_model(
            self.cfg.model, spec.input_shape, spec.num_classes, seed=derive_seed(self.cfg.seed, "model", *labels)
        )
        model = model.to(self.device)
        if self.cfg.trainer.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def prunable(self, model: nn.Module) -> dict[str, nn.Parameter]:
        params = from_sparsity_config(model, self.cfg.sparsity)
        if not params:
            raise UserError(
                "sparsity excludes every prunable layer: relax sparsity.exclude / exclude_first / exclude_last"
            )
        return params

    def log_start(self, prunable_weights: int, **fields: Any) -> None:
        """The ``run_start`` event: what runs, on what, where (plus method-specific ``fields``)."""
        cfg = self.cfg
        self.tracker.log(
            "run_start",
            method=cfg.method.name,
            model=cfg.model.name,
            data=self.data.describe(),
            output_dir=str(self.output_dir),
            resumed=self.resumed,
            prunable_weights=prunable_weights,
            **fields,
        )

    def generator(self, *labels: object) -> torch.Generator:
        return torch.Generator().manual_seed(derive_seed(self.cfg.seed, *labels))

    def message(self, text: str) -> None:
        self.tracker.log("message", text=text)

    # ----------------------------------------------------------------------------------------- stages
    def completed(self, key: str) -> StageResult | None:
        data = self.state["completed"].get(key)
        return StageResult.from_dict(data).settle() if data is not None else None

    def train(
        self,
        stage: Stage,
        model: nn.Module,
        enforcer: MaskEnforcer | None,
        hooks: Iterable[Any] = (),
        *,
        keep_weights: bool = False,
        keep_best_state: bool = False,
        optimizer_state: dict[str, Any] | None = None,
        optim: OptimConfig | None = None,
    ) -> StageResult:
        """Train ``stage`` unless a previous attempt finished it; afterwards ``model`` holds the stage's final
        weights (when they were kept). Results are persisted before this returns. ``optim`` replaces ``cfg.optim``
        for this stage (e.g. a smaller fine-tuning learning rate)."""
        done = self.completed(stage.key)
        if done is not None:
            distributed.barrier()  # rank 0 may still be writing what the others read next
            weights = self.weights_path(stage.key)
            if weights.exists():
                unwrap(model).load_state_dict(torch.load(weights, map_location=self.device, weights_only=True))
            return done
        preemption.stop_if_requested(
            f"before {stage.key}",
            anywhere=distributed.any_rank(preemption.requested()),
            is_main=distributed.is_main(),
        )
        trainer = Trainer(
            model,
            self.data,
            optim=optim or self.cfg.optim,
            trainer=self.cfg.trainer,
            seed=self.cfg.seed,
            tracker=self.tracker,
            checkpoint_path=self.checkpoint_path,
            forward=self.forward_module(model),
        )
        # trainer.penalty / sam / nvrm (paper 002) apply to every stage of every method, around its own hooks
        before, after = [], []
        if flatness_enabled(self.cfg.trainer):
            owner = unwrap(model)
            prunable = enforcer.params if enforcer is not None else from_sparsity_config(owner, self.cfg.sparsity)
            before, after = flatness_hooks(self.cfg.trainer, owner, prunable, enforcer, seed=self.cfg.seed)
        result = trainer.fit(
            stage,
            [*before, *hooks_with(enforcer, hooks), *after],
            keep_best_state=keep_best_state,
            optimizer_state=optimizer_state,
        )
        if distributed.is_main():
            if keep_weights or self.cfg.trainer.keep_round_weights:  # every stage's, to analyse any of them
                save_torch_atomic(self.weights_path(stage.key), unwrap(model).state_dict())
            if keep_best_state and trainer.best_state is not None:
                save_torch_atomic(self.weights_path(stage.key, "best"), trainer.best_state)
        self.state["completed"][stage.key] = result.to_dict()
        self._save_state()
        distributed.barrier()  # files written by rank 0 are visible to every rank before anyone reads them
        return result

    def evaluate(
        self, model: nn.Module, key: str, round_index: int, *, density: float = 1.0, phase: str = "evaluate"
    ) -> StageResult:
        """Validation and test figures of ``model`` as it is, without training (e.g. a network just pruned with no
        fine-tuning): computed once and kept in ``state.json``, so a resumed run reads them back."""
        done = self.completed(key)
        if done is not None:
            return done
        evaluator = self._evaluator(model)
        val, test = evaluator.evaluate("val"), evaluator.evaluate("test")
        result = StageResult(key, round_index, phase, density)
        if val is not None:
            result.best_epoch = 0
            result.best_val_loss, result.best_val_acc = val
            result.final_val_loss, result.final_val_acc = val
        if test is not None:
            result.final_test_loss, result.final_test_acc = test
            result.best_val_test_acc = test[1] if val is not None else None
        result.settle()
        self.tracker.log("evaluation", **result.to_dict())
        self.state["completed"][key] = result.to_dict()
        self._save_state()
        distributed.barrier()
        return result

    def measured(self, key: str, split: str = "train") -> tuple[float, float] | None:
        """The loss and accuracy :meth:`measure` kept for ``key`` on ``split`` (None: not measured yet)."""
        value = self.state.get("measures", {}).get(f"{key}@{split}")
        return (float(value[0]), float(value[1])) if value is not None else None

    def measure(self, model: nn.Module, key: str, split: str = "train") -> tuple[float, float] | None:
        """Mean loss and accuracy of ``model`` as it is on ``split`` ("train" included), evaluated as validation is
        (eval mode, no augmentation, every example once): computed once and kept in ``state.json`` under ``key``,
        so a resumed run reads the figure back even after the weights it was measured on were released."""
        done = self.measured(key, split)
        if done is not None:
            return done
        evaluator = self._evaluator(model)
        value = evaluator.evaluate(split)
        if value is not None:
            self.state.setdefault("measures", {})[f"{key}@{split}"] = list(value)
            self._save_state()
        distributed.barrier()
        return value

    def _evaluator(self, model: nn.Module) -> Trainer:
        """A trainer that only evaluates ``model`` (never compiled: one pass is not worth a compilation)."""
        return Trainer(
            model, self.data, optim=self.cfg.optim, trainer=dataclasses.replace(self.cfg.trainer, compile=False)
        )

    def forward_module(self, model: nn.Module) -> nn.Module:
        """``model`` itself, or (several processes) its DistributedDataParallel wrapper, made once per model."""
        if distributed.world_size() == 1:
            return model
        if id(model) not in self._ddp:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self._ddp[id(model)] = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        return self._ddp[id(model)]

    def weights_path(self, key: str, which: str = "final") -> Path:
        return self.output_dir / "checkpoints" / f"{key.replace('/', '_')}.{which}.pt"

    def load_weights(self, key: str, which: str = "final") -> dict[str, torch.Tensor]:
        path = self.weights_path(key, which)
        if not path.exists():
            raise UserError(f"{path} is missing; the run directory is incomplete (remove it to start over)")
        return torch.load(path, map_location=self.device, weights_only=True)

    def release_weights(self, key: str) -> None:
        """Delete a stage's saved weights once no later step needs them (unless every round's are kept)."""
        if self.cfg.trainer.keep_round_weights or not distributed.is_main():
            return
        for which in ("final", "best"):
            self.weights_path(key, which).unlink(missing_ok=True)

    # ----------------------------------------------------------------------------------------- masks
    def mask_path(self, name: str) -> Path:
        return self.output_dir / "masks" / f"{name}.pt"

    def saved_mask(self, name: str) -> Mask | None:
        path = self.mask_path(name)
        return Mask.load(path, device=self.device) if path.exists() else None

    def save_mask(self, name: str, mask: Mask) -> Mask:
        """Agree on ``mask`` (rank 0's is broadcast: random selections included), save it, return the agreed one."""
        mask = mask.broadcast()
        if distributed.is_main():
            mask.save(self.mask_path(name))
        distributed.barrier()
        return mask

    def criterion_context(self, model: nn.Module, *labels: object) -> ScoreContext:
        """What a pruning criterion may use: a seed from ``labels``, the model and a seeded pass over the training
        split (read only by data-driven criteria such as SNIP, GraSP and OBD)."""
        seed = derive_seed(self.cfg.seed, "criterion", *labels)
        sparsity = self.cfg.sparsity
        return ScoreContext(
            seed=seed,
            model=unwrap(model),
            batches=_TrainingPass(self.data, derive_seed(seed, "data"), self.device),
            options={
                "criterion_batches": sparsity.criterion_batches,
                "grasp_samples_per_class": sparsity.grasp_samples_per_class,
                "grasp_temperature": sparsity.grasp_temperature,
                "obd_hessian": sparsity.obd_hessian,
                "obd_samples": sparsity.obd_samples,
                "num_classes": self.data.spec.num_classes,
            },
        )

    def mask(
        self,
        name: str,
        compute: Callable[[], Mask],
        *,
        round: int | None = None,  # noqa: A002
        step: int | None = None,
        **fields: Any,
    ) -> Mask:
        """The mask ``name``: read back when an earlier attempt saved it, else ``compute()``-d, agreed by every rank,
        saved, and (with ``round``) logged as that round's prune event with ``fields``."""
        saved = self.saved_mask(name)
        if saved is not None:
            return saved
        mask = self.save_mask(name, compute())
        if round is not None:
            self.log_prune(mask, round=round, step=step, **fields)
        return mask

    def log_prune(self, mask: Mask, *, round: int, step: int | None = None, **fields: Any) -> None:  # noqa: A002
        """The one ``prune`` record: round, optimizer step (pruning during training), exact kept count, density
        and per-layer densities, plus method-specific ``fields``."""
        self.tracker.log(
            "prune",
            round=round,
            step=step,
            density=mask.density(),
            kept=mask.num_kept(),
            total=mask.numel(),
            layer_densities=mask.layer_densities(),
            **fields,
        )

    def save_state_tensors(self, name: str, payload: Any) -> None:
        """Written by rank 0 (call it on every rank: it synchronises them)."""
        if distributed.is_main():
            save_torch_atomic(self.output_dir / "checkpoints" / f"{name}.pt", payload)
        distributed.barrier()

    def load_state_tensors(self, name: str) -> Any:
        path = self.output_dir / "checkpoints" / f"{name}.pt"
        return torch.load(path, map_location=self.device, weights_only=False) if path.exists() else None

    # ----------------------------------------------------------------------------------------- summary
    def header(self, total: int) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "method": cfg.method.name,
            "model": cfg.model.name,
            "dataset": cfg.dataset.name,
            "seed": cfg.seed,
            "target_sparsity": cfg.sparsity.target,
            "scope": cfg.sparsity.scope,
            "prunable_weights": total,
        }

    def write_summary(self, total: int, **fields: Any) -> Summary:
        """Build the run's :class:`~lth_runner.summary.Summary` from this run's header and ``fields`` (the keyword
        arguments of :func:`lth_runner.summary.build_summary`), write it to ``summary.json`` and return it."""
        summary = build_summary(self.header(total), **fields)
        if distributed.is_main():
            write_json_atomic(self.output_dir / "summary.json", summary.to_dict())
        return summary

    def close(self, failed: bool = False) -> None:
        """Close every sink (W&B runs are finished, with a failure exit code when the run raised)."""
        self.tracker.close(failed=failed)

    # ----------------------------------------------------------------------------------------- internals
    def _save_state(self) -> None:
        if distributed.is_main():
            write_json_atomic(self.state_path, self.state)


class _TrainingPass:
    """A re-iterable, seeded pass over the training batches (each iteration starts the same pass afresh)."""

    def __init__(self, data: DataBundle, seed: int, device: torch.device) -> None:
        self.data, self.seed, self.device = data, seed, device

    def __iter__(self) -> Any:
        for x, y in self.data.train_batches(self.seed):  # whole batches: every rank scores the same
            yield x.to(self.device), y.to(self.device)


def resume_fingerprint(cfg: RunConfig) -> dict[str, Any]:
    """The configuration keys that change what a run computes (all but :data:`RESULT_NEUTRAL_KEYS`)."""
    flat = flatten(dataclasses.asdict(cfg))
    return {k: v for k, v in flat.items() if not is_result_neutral(k)}


def config_yaml(cfg: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(dataclasses.asdict(cfg)))


# --------------------------------------------------------------------------------------------- process set-up
def prepare_process(cfg: RunConfig) -> torch.device:
    """Once per process, before any run: pick the device, join the process group the environment describes, and
    set torch's threads and kernel flags. Returns the device."""
    device = select_device(cfg.trainer.device)
    distributed.setup(device.type)
    check_distributed(cfg, device)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    if cfg.trainer.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return device


def check_distributed(cfg: RunConfig, device: torch.device) -> None:
    """Distributed misconfigurations end the run at start, in one line."""
    world = distributed.world_size()
    if world == 1:
        return
    if cfg.trainer.batch_size % world:
        raise UserError(
            f"trainer.batch_size={cfg.trainer.batch_size} is not accepted: expected a multiple of the "
            f"{world} processes (the batch size is global, split evenly across ranks)"
        )
    if device.type == "cuda" and cfg.trainer.device not in ("auto", "cuda"):
        raise UserError(
            f"trainer.device={cfg.trainer.device!r} is not accepted with {world} processes: expected auto or cuda "
            f"(each process takes the GPU of its local rank; choose GPUs with CUDA_VISIBLE_DEVICES)"
        )
    if device.type == "cuda" and torch.cuda.device_count() < int(os.environ.get("LOCAL_WORLD_SIZE", "1")):
        raise UserError(
            f"{os.environ.get('LOCAL_WORLD_SIZE')} processes on this node but "
            f"{torch.cuda.device_count()} GPU(s): start one process per GPU (or use trainer.device=cpu)"
        )


def select_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            return torch.device("cuda", local % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"trainer.device={name!r} is not accepted: expected auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"trainer.device={name!r} is not accepted: no CUDA device is available here (use auto or cpu)")
    if device.type == "cuda" and device.index is None:  # one GPU per process: the local rank's
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return device


# --------------------------------------------------------------------------------------------- the run
def run_experiment(cfg: RunConfig, output_dir: str | Path, *, console: ConsoleReporter | None = None) -> Summary:
    """Run ``cfg.method`` in ``output_dir`` (resuming whatever is there) and return its summary.

    Order: process set-up, resume check and data (nothing written yet), then the run's files, Weights & Biases,
    and the method. A signal (Ctrl-C, SIGTERM, the scheduler's warning) ends it with a checkpoint
    (:class:`lth_runner.preemption.Interrupted`)."""
    from lth_runner.catalog import METHODS

    method = METHODS.get(cfg.method.name)
    device = prepare_process(cfg)
    run = RunContext(cfg, output_dir, device=device, console=console)
    try:
        with preemption.guard():
            run.check_resume()
            run.data  # noqa: B018 (load now: a missing dataset is reported before any file is written)
            run.begin()
            if distributed.is_main() and wandb_enabled(cfg.logger.wandb):
                from lth_runner.tracking.wandb_sink import WandbSink

                run.tracker.sinks.append(WandbSink.create(run))
            summary = method(run)
            if distributed.is_main():
                report_end(run, summary)
    except BaseException:
        run.close(failed=True)
        raise
    run.close()
    return summary


def holds_results(output_dir: str | Path) -> bool:
    """Whether ``output_dir`` holds anything a re-run would resume from (finished stages, checkpoints, masks, a
    summary); the configuration and the logs of an attempt that failed before that do not count."""
    path = Path(output_dir)
    if any((path / name).exists() for name in ("summary.json", "checkpoints", "masks")):
        return True
    try:
        return bool(json.loads((path / "state.json").read_text()).get("completed"))
    except (OSError, ValueError):
        return False


def remove_failed_run(output_dir: str | Path) -> None:
    """Remove a run directory that a failed first attempt created and filled with nothing worth keeping."""
    if not holds_results(output_dir):
        shutil.rmtree(output_dir, ignore_errors=True)


def wandb_enabled(cfg: Any) -> bool:
    mode = os.environ.get("WANDB_MODE", "") if cfg.mode == "auto" else cfg.mode
    return mode != "disabled"


def report_end(run: RunContext, summary: Summary) -> None:
    """Final table on the console, a plot, and a ``run_end`` event."""
    title = f"{summary.method} | {summary.model} | {summary.dataset}"
    if len(summary.rounds) > 1:
        _rounds_table(run, summary, title)
    else:
        stages = summary.cost.epochs_per_stage
        run.console.table(f"{title} (epochs per stage)", ["stage", "epochs"], [[k, v] for k, v in stages.items()])
    final = summary.final
    if final is not None:
        controls = "".join(f", {name} {_pct(c.test_acc)}%" for name, c in final.controls.items())
        run.console.print(
            f"final: density {_pct(final.density)}%, test accuracy {_pct(final.test_acc)}% "
            f"({_where(final.selection)}), {_pct(final.final_test_acc)}% at the last epoch{controls}"
        )
    plot = None
    if run.cfg.logger.plots:
        from lth_runner import plots

        plots_dir = run.output_dir / "plots"
        if len(summary.rounds) > 1:
            plot = str(plots.accuracy_vs_density(summary, plots_dir / "accuracy_vs_density.png"))
        else:
            records = read_jsonl(run.output_dir / "metrics.jsonl")
            plot = str(plots.accuracy_over_training(summary, records, plots_dir / "accuracy_over_training.png"))
    run.tracker.log(
        "run_end",
        summary=str(run.output_dir / "summary.json"),
        plot=plot,
        status=summary.status,
        cost=dataclasses.asdict(summary.cost),
    )
    run.console.print(f"results: {run.output_dir / 'summary.json'}" + (f", plot: {plot}" if plot else ""))


def _rounds_table(run: RunContext, summary: Summary, title: str) -> None:
    columns = ["round", "density %", "ticket test %", "ticket final %"]
    controls = sorted({name for r in summary.rounds for name in r.controls})
    columns += [f"{name} test %" for name in controls]
    rows = []
    for entry in summary.rounds:
        ticket = entry.ticket
        row = [entry.round, f"{100 * entry.density:.2f}", _pct(ticket.test_acc), _pct(ticket.final_test_acc)]
        row += [_pct(entry.controls[c].test_acc) if c in entry.controls else "-" for c in controls]
        rows.append(row)
    run.console.table(f"{title} (test accuracy at the best validation epoch)", columns, rows)


def _where(selection: str | None) -> str:
    return "at the best validation epoch" if selection == "best_val" else "at the last epoch"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"
