"""A run's session: its output directory, device, data, tracker, and the bookkeeping that makes it resumable.

Output layout (all writes atomic)::

    <output_dir>/
      config.yaml            the validated configuration
      metrics.jsonl          one JSON object per event (epochs, stages, prunes); an epoch cut short by a crash
                             after it was logged is logged again when it is re-run: the last record per
                             (key, epoch) is the one that counts
      summary.json           per-round results and costs (rewritten after every stage)
      state.json             completed stages and method notes (what a resumed run skips)
      masks/round_XX.pt      the mask of every round (bool tensors)
      checkpoints/last.pt    the stage in progress (model, optimizer, step, hook states)
      checkpoints/*.pt       final weights of stages a later round needs; the rewind point
      plots/                 accuracy-vs-density plot

Re-running with the same output directory resumes: finished stages are read back from ``state.json``, the stage in
progress continues from ``checkpoints/last.pt``, and the next mask is never recomputed once saved.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from lth_runner import distributed, preemption
from lth_runner.config.schema import OptimConfig, RunConfig
from lth_runner.data import DataBundle, build_data
from lth_runner.errors import UserError
from lth_runner.models import build_model
from lth_runner.sparse.enforce import MaskEnforcer
from lth_runner.sparse.mask import Mask
from lth_runner.sparse.prunable import from_sparsity_config, unwrap
from lth_runner.tracking import ConsoleReporter, Tracker
from lth_runner.tracking.tracker import JsonlSink
from lth_runner.training.trainer import Stage, StageResult, Trainer, hooks_with
from lth_runner.utils.dicts import flatten
from lth_runner.utils.io import read_jsonl, save_torch_atomic, write_json_atomic, write_text_atomic
from lth_runner.utils.seeding import derive_seed

# Settings that change how a run is executed or displayed, not what it computes: a resumed run may differ in them.
_RESUME_NEUTRAL = (
    "logger",
    "paths",
    "plugins",
    "name",
    "trainer.device",
    "trainer.devices",
    "trainer.num_threads",
    "trainer.checkpoint_every",
    "trainer.keep_round_weights",
    "trainer.compile",
)


class RunContext:
    """Everything a method needs to train stages, save masks and report, for one output directory."""

    def __init__(self, cfg: RunConfig, output_dir: str | Path, *, console: ConsoleReporter | None = None) -> None:
        self.cfg = cfg
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.state_path = self.output_dir / "state.json"
        self.state: dict[str, Any] = json.loads(self.state_path.read_text()) if self.state_path.exists() else {}
        self.state.setdefault("completed", {})
        self.resumed = bool(self.state["completed"]) or (self.checkpoint_path).exists()
        self._check_resume_config()
        self.device = select_device(cfg.trainer.device)
        distributed.setup(self.device.type)
        check_distributed(cfg, self.device)
        configure_torch(cfg)
        self._ddp: dict[int, nn.Module] = {}
        self.console = console or ConsoleReporter(cfg.logger.console)
        self.tracker = Tracker([JsonlSink(self.output_dir / "metrics.jsonl"), self.console])
        if distributed.is_main() and wandb_enabled(cfg.logger.wandb):
            from lth_runner.tracking.wandb_sink import WandbSink

            self.tracker.sinks.append(WandbSink.create(self))
        self._data: DataBundle | None = None
        if distributed.is_main():
            write_text_atomic(self.output_dir / "config.yaml", config_yaml(cfg))

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

    # ----------------------------------------------------------------------------------------- stages
    def completed(self, key: str) -> StageResult | None:
        data = self.state["completed"].get(key)
        return StageResult.from_dict(data) if data is not None else None

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
        result = trainer.fit(
            stage, hooks_with(enforcer, hooks), keep_best_state=keep_best_state, optimizer_state=optimizer_state
        )
        if distributed.is_main():
            if keep_weights:
                save_torch_atomic(self.weights_path(stage.key), unwrap(model).state_dict())
            if keep_best_state and trainer.best_state is not None:
                save_torch_atomic(self.weights_path(stage.key, "best"), trainer.best_state)
        self.state["completed"][stage.key] = result.to_dict()
        self._save_state()
        distributed.barrier()  # files written by rank 0 are visible to every rank before anyone reads them
        return result

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

    # ----------------------------------------------------------------------------------------- masks and notes
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

    def save_state_tensors(self, name: str, payload: Any) -> None:
        """Written by rank 0 (call it on every rank: it synchronises them)."""
        if distributed.is_main():
            save_torch_atomic(self.output_dir / "checkpoints" / f"{name}.pt", payload)
        distributed.barrier()

    def load_state_tensors(self, name: str) -> Any:
        path = self.output_dir / "checkpoints" / f"{name}.pt"
        return torch.load(path, map_location=self.device, weights_only=False) if path.exists() else None

    def write_summary(self, summary: dict[str, Any]) -> None:
        if distributed.is_main():
            write_json_atomic(self.output_dir / "summary.json", summary)

    def close(self, failed: bool = False) -> None:
        """Close every sink (W&B runs are finished, with a failure exit code when the run raised)."""
        self.tracker.close(failed=failed)

    # ----------------------------------------------------------------------------------------- internals
    def _save_state(self) -> None:
        if distributed.is_main():
            write_json_atomic(self.state_path, self.state)

    def _check_resume_config(self) -> None:
        """Refuse to resume a directory whose run computed something else."""
        fingerprint = resume_fingerprint(self.cfg)
        previous = self.state.get("fingerprint")
        if self.resumed and previous is not None and previous != fingerprint:
            changed = sorted(k for k in set(previous) | set(fingerprint) if previous.get(k) != fingerprint.get(k))
            shown = ", ".join(f"{k}: {previous.get(k)!r} -> {fingerprint.get(k)!r}" for k in changed[:3])
            more = f" (+{len(changed) - 3} more)" if len(changed) > 3 else ""
            raise UserError(
                f"{self.output_dir} holds a run with a different configuration ({shown}{more}); "
                f"re-run with the same settings to resume, or choose another hydra.run.dir"
            )
        self.state["fingerprint"] = fingerprint
        self._save_state()


def resume_fingerprint(cfg: RunConfig) -> dict[str, Any]:
    flat = flatten(dataclasses.asdict(cfg))
    return {k: v for k, v in flat.items() if not any(k == n or k.startswith(n + ".") for n in _RESUME_NEUTRAL)}


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
    if device.type == "cuda" and torch.cuda.device_count() < int(os.environ.get("LOCAL_WORLD_SIZE", "1")):
        raise UserError(
            f"{os.environ.get('LOCAL_WORLD_SIZE')} processes on this node but "
            f"{torch.cuda.device_count()} GPU(s): start one process per GPU (or use trainer.device=cpu)"
        )


def config_yaml(cfg: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(dataclasses.asdict(cfg)))


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
    return device


def configure_torch(cfg: RunConfig) -> None:
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    if cfg.trainer.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def run_experiment(cfg: RunConfig, output_dir: str | Path) -> dict[str, Any]:
    """Run ``cfg.method`` in ``output_dir`` (resuming whatever is there) and return its summary."""
    from lth_runner.methods import METHODS

    method = METHODS.get(cfg.method.name)
    run = RunContext(cfg, output_dir)
    try:
        with preemption.guard():
            summary = method(run)
        if distributed.is_main():
            report_end(run, summary)
    except BaseException:
        run.close(failed=True)
        raise
    run.close()
    return summary


def wandb_enabled(cfg: Any) -> bool:
    mode = os.environ.get("WANDB_MODE", "") if cfg.mode == "auto" else cfg.mode
    return mode != "disabled"


def report_end(run: RunContext, summary: dict[str, Any]) -> None:
    """Final table on the console, a plot, and a ``run_end`` event."""
    title = f"{summary.get('method')} | {summary.get('model')} | {summary.get('dataset')}"
    if summary.get("rounds"):
        _rounds_table(run, summary, title)
    else:
        stages = summary.get("cost", {}).get("epochs_per_stage", {})
        run.console.table(f"{title} (epochs per stage)", ["stage", "epochs"], [[k, v] for k, v in stages.items()])
    final = summary.get("final", {})
    run.console.print(
        f"final: density {_pct(final.get('density'))}%, test accuracy {_pct(final.get('test_acc'))}% "
        f"at the best validation epoch, {_pct(final.get('final_test_acc'))}% at the last epoch"
    )
    plot = None
    if run.cfg.logger.plots:
        from lth_runner import plots

        plots_dir = run.output_dir / "plots"
        if summary.get("rounds"):
            plot = str(plots.accuracy_vs_density(summary, plots_dir / "accuracy_vs_density.png"))
        else:
            records = read_jsonl(run.output_dir / "metrics.jsonl")
            plot = str(plots.accuracy_over_training(summary, records, plots_dir / "accuracy_over_training.png"))
    run.tracker.log(
        "run_end",
        summary=str(run.output_dir / "summary.json"),
        plot=plot,
        status=summary.get("status"),
        cost=summary.get("cost"),
    )
    run.console.print(f"results: {run.output_dir / 'summary.json'}" + (f", plot: {plot}" if plot else ""))


def _rounds_table(run: RunContext, summary: dict[str, Any], title: str) -> None:
    columns = ["round", "density %", "ticket test %", "ticket final %"]
    controls = sorted({name for r in summary["rounds"] for name in r["controls"]})
    columns += [f"{name} test %" for name in controls]
    rows = []
    for entry in summary["rounds"]:
        ticket = entry["ticket"]
        row = [
            entry["round"],
            f"{100 * entry['density']:.2f}",
            _pct(ticket["best_val_test_acc"]),
            _pct(ticket["final_test_acc"]),
        ]
        row += [_pct(entry["controls"][c]["best_val_test_acc"]) if c in entry["controls"] else "-" for c in controls]
        rows.append(row)
    run.console.table(f"{title} (test accuracy at the best validation epoch)", columns, rows)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"
