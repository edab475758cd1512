"""Typed configuration schemas: one dataclass per config group, registered in Hydra's ConfigStore.

The core library takes these dataclasses, not Hydra objects. Every field that has a limited range or a fixed set
of values says so in its metadata (``ge``/``gt``/``le``/``lt``/``choices``); :mod:`lth_runner.config.validate`
enforces it and reports a violation as one line naming the key, the value and what is accepted.

This module imports neither torch nor anything heavy, so ``lth-run --help`` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING


def option(default: Any = MISSING, *, factory: Any = None, **checks: Any) -> Any:
    """A dataclass field with validation metadata (``ge``, ``gt``, ``le``, ``lt``, ``choices``, ``items``)."""
    if factory is not None:
        return field(default_factory=factory, metadata=checks)
    return field(default=default, metadata=checks)


# --------------------------------------------------------------------------------------------------- model
@dataclass
class ModelConfig:
    """``arch`` selects the builder in the model registry; every other key is passed to it as a keyword argument
    (checked against the builder's signature). ``name`` is the display name (for ``arch=timm``, the timm model)."""

    arch: str = MISSING
    name: str = MISSING
    kwargs: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------- dataset
@dataclass
class DatasetConfig:
    """Fields shared by every dataset; loaders add their own in a subclass."""

    name: str = MISSING
    root: str | None = None  # None: <paths.data_root>/<dataset name>
    val_size: float = option(0.1, ge=0.0)  # < 1: fraction of the training set; >= 1: number of examples
    split_seed: int = option(0, ge=0)  # fixed across run seeds so every seed sees the same val/test split
    train_subset: int | None = option(None, ge=1)  # keep only this many training examples (quick runs)
    augment: bool = False  # random crop (with padding) + horizontal flip, image data only
    crop_padding: int = option(4, ge=0)
    download: bool = True  # download when the files are missing and the network is reachable
    placement: str = option("auto", choices=("auto", "device", "cpu"))  # where in-memory tensors live


@dataclass
class Mnist1dConfig(DatasetConfig):
    num_samples: int = option(5000, ge=100)  # generated in total; mnist1d's train_split decides the test part
    train_split: float = option(0.8, gt=0.0, lt=1.0)
    generator_seed: int = option(42, ge=0)  # mnist1d's own seed (its default, so data match the paper's)


@dataclass
class MnistConfig(DatasetConfig):
    test_holdout: int = option(2000, ge=1)  # used only when the folder holds just the 10k test files


@dataclass
class CifarConfig(DatasetConfig):
    augment: bool = True
    verify_checksums: bool = True  # md5 of the canonical archive; turn off for re-encoded copies


@dataclass
class ImageFolderConfig(DatasetConfig):
    train_dir: str = "train"
    test_dir: str = "val"
    image_size: int = option(64, ge=8)
    resize: int | None = option(None, ge=8)  # shorter side before the centre crop at evaluation
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    num_workers: int = option(4, ge=0)


@dataclass
class SyntheticConfig(DatasetConfig):
    shape: list[int] = option(factory=lambda: [3, 32, 32], items=dict(ge=1))
    num_classes: int = option(10, ge=2)
    train_size: int = option(512, ge=2)
    test_size: int = option(256, ge=1)
    dtype: str = option("uint8", choices=("uint8", "float32"))
    seed: int = option(0, ge=0)


# -------------------------------------------------------------------------------------------------- method
@dataclass
class MethodConfig:
    """Fields shared by every method; each method registers its own subclass."""

    name: str = MISSING


@dataclass
class LTHConfig(MethodConfig):
    """Lottery ticket hypothesis (Frankle & Carbin 2019; late rewinding: Frankle et al. 2020)."""

    criterion: str = "magnitude"  # pruning criterion registry key
    rewind_to: int = option(0, ge=0)  # 0: original initialisation; k: state after k epochs/iterations
    rewind_unit: str = option("epoch", choices=("epoch", "iteration"))
    prune_from: str = option("final", choices=("final", "best_val"))  # which trained weights are ranked
    controls: list[str] = option(factory=list, items=dict(choices=("reinit", "random_prune")))
    control_rounds: str = option("all", choices=("all", "last"))


@dataclass
class UniLTHConfig(MethodConfig):
    """UniLTH / UniDLTH (seed 000, Algorithm 1): early stopping + rewind, then pruning under a growing penalty."""

    patience: int = option(2, ge=1)  # phi: stage 1 stops when validation loss has not improved for this many epochs
    min_delta: float = option(0.0, ge=0.0)
    rewind: int = option(2, ge=0)  # xi: stage 2 starts from the state this many epochs before the stop
    stage1_max_epochs: int | None = option(None, ge=1)  # cap on stage 1 (null: trainer.epochs)
    stage2_epochs: int | None = option(None, ge=1)  # E of the laws (null: what remains of trainer.epochs)
    reset_after_prune: bool = False  # Sec. 3.3 "train, prune, reset" instead of Algorithm 1's continuous stage 2
    rewind_optimizer: bool = False  # restore the optimizer state of the rewind epoch too
    rewind_schedule: bool = True  # the learning-rate schedule continues from the rewind epoch (else restarts)
    weight_decay: str = option("none", choices=("none", "stage2", "both"))  # where optim.weight_decay applies
    finetune_epochs: int = option(0, ge=0)  # after the last pruning event, without penalty
    criterion: str = "magnitude"


@dataclass
class DLTHConfig(MethodConfig):
    """DLTH / DLTH-Iter (Bai et al. 2022, random sparse network transformation, RST)."""

    grow_epochs: int | None = option(None, ge=1)  # penalty rises to its ceiling (null: 30% of trainer.epochs)
    stabilize_epochs: int | None = option(None, ge=0)  # penalty held at the ceiling (null: 20% of trainer.epochs)
    finetune_epochs: int | None = option(None, ge=0)  # after pruning (null: the rest of trainer.epochs)
    finetune_restart: bool = True  # fine-tune with a fresh optimizer and learning-rate schedule


@dataclass
class EarlyBirdConfig(MethodConfig):
    """Early-Bird tickets (You et al. 2020): find the mask early in dense training, prune, retrain."""

    detect: str = option("distance", choices=("distance", "fixed_epoch"))
    threshold: float = option(0.1, ge=0.0, le=1.0)  # max normalised Hamming distance to the older masks
    window: int = option(5, ge=2)  # FIFO of the last masks (the newest is compared with the others)
    fixed_fraction: float = option(0.125, gt=0.0, le=1.0)  # fixed_epoch: the ticket is drawn at this fraction of E
    granularity: str = option("weight", choices=("weight", "channel"))
    bn_l1: float = option(1e-4, ge=0.0)  # channel variant: L1 penalty on BatchNorm scales during the search
    # init: the original initialisation (a lottery ticket, seed 000's "EB for LTH"); eb: the weights at detection;
    # reinit: a fresh random initialisation (what the reference code's retraining scripts do)
    retrain_from: str = option("init", choices=("init", "eb", "reinit"))
    retrain_epochs: int | None = option(None, ge=1)  # null: trainer.epochs


@dataclass
class L1Config(MethodConfig):
    """Seed 000's "L1" baseline: magnitude pruning of a pre-trained network, then fine-tuning (Li et al. 2017)."""

    pretrained: str | None = None  # a run directory or a state-dict file; null: train the dense network here
    structure: str = option("weight", choices=("weight", "filter"))  # per-layer weights, or whole filters by L1
    finetune_epochs: int | None = option(None, ge=0)  # null: trainer.epochs
    finetune_lr_scale: float = option(0.1, gt=0.0)  # fine-tuning learning rate = optim.lr * this


# --------------------------------------------------------------------------------------------- regularizer
@dataclass
class RegularizerConfig:
    """The growing L2 penalty ``alpha * ||w_S||^2`` of the regularized methods (seed 000, Sec. 3.3)."""

    name: str = option("none", choices=("none", "linear", "loglaw", "explaw", "tanlaw"))
    ceiling: float | None = option(None, ge=0.0)  # R_ceil; null: the method's default (docs/methods.md)
    granularity: str = option("iteration", choices=("iteration", "epoch"))  # how often alpha is updated
    gradient_scale: float = option(2.0, gt=0.0)  # d/dw alpha*||w||^2 = 2*alpha*w; reference codes often add alpha*w


# ------------------------------------------------------------------------------------------------ sparsity
@dataclass
class SparsityConfig:
    """Where pruning goes. ``target`` is the final sparsity (fraction of prunable weights removed)."""

    target: float = option(0.8, ge=0.0, lt=1.0)
    scope: str = option("global", choices=("global", "layerwise"))
    exclude: list[str] = field(default_factory=list)  # fnmatch patterns on parameter names, e.g. "fc3.*"
    exclude_first: bool = False  # keep the first conv/linear layer dense
    exclude_last: bool = False  # keep the classifier dense
    rounds: int = option(10, ge=1)  # pruning rounds (psi) of iterative methods (geometric schedule)
    schedule: str = option("geometric", choices=("geometric", "fixed_fraction"))
    rate: float = option(0.2, gt=0.0, lt=1.0)  # fraction of survivors removed per round (fixed_fraction)


# ------------------------------------------------------------------------------------------------ optimizer
@dataclass
class SchedulerConfig:
    name: str = option("constant", choices=("constant", "cosine", "cosine_restarts", "multistep"))
    warmup_epochs: float = option(0.0, ge=0.0)  # linear warm-up from 0 to lr
    min_lr: float = option(0.0, ge=0.0)
    milestones: list[float] = option(factory=list, items=dict(gt=0.0))  # multistep, in epochs
    gamma: float = option(0.1, gt=0.0)  # multistep decay factor
    restart_epochs: float = option(10.0, gt=0.0)  # cosine_restarts: length of the first cycle (T_0)
    restart_mult: float = option(1.0, ge=1.0)  # cosine_restarts: cycle growth (T_mult)
    granularity: str = option("iteration", choices=("iteration", "epoch"))


@dataclass
class OptimConfig:
    name: str = option("sgd", choices=("sgd", "adam", "adamw"))
    lr: float = option(0.1, gt=0.0)
    momentum: float = option(0.9, ge=0.0, lt=1.0)
    nesterov: bool = False
    weight_decay: float = option(0.0, ge=0.0)
    betas: list[float] = option(factory=lambda: [0.9, 0.999], items=dict(ge=0.0, lt=1.0))
    eps: float = option(1e-8, gt=0.0)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)


# ------------------------------------------------------------------------------------------------- trainer
@dataclass
class TrainerConfig:
    epochs: int = option(10, ge=1)
    batch_size: int = option(128, ge=1)
    eval_batch_size: int = option(1000, ge=1)
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    devices: int = option(1, ge=1)  # processes (one per device) per node of a SLURM job; torchrun sets its own
    precision: str = option("fp32", choices=("fp32", "bf16"))
    channels_last: bool = False
    compile: bool = False
    deterministic: bool = False
    label_smoothing: float = option(0.0, ge=0.0, lt=1.0)
    max_grad_norm: float | None = option(None, gt=0.0)
    eval_test: bool = True  # also evaluate on the test split every epoch (reported, never used for selection)
    checkpoint_every: int = option(1, ge=1)  # epochs between resume checkpoints
    keep_round_weights: bool = False  # keep every round's final weights, not only the latest
    num_threads: int | None = option(None, ge=1)


# -------------------------------------------------------------------------------------------------- logger
@dataclass
class WandbConfig:
    """Weights & Biases. ``auto``: ``$WANDB_MODE`` if set, else online with credentials and offline without;
    never prompts. Runs are written under the run's output directory."""

    mode: str = option("auto", choices=("auto", "online", "offline", "disabled"))
    project: str = "lth-runner"
    entity: str | None = None
    group: str | None = None  # null: the sweep directory's name for multirun jobs, none for single runs
    tags: list[str] = field(default_factory=list)  # added to method/model/dataset/sparsity/seed tags


@dataclass
class LoggerConfig:
    console: str = option("auto", choices=("auto", "rich", "plain", "none"))
    plots: bool = True  # accuracy-vs-density plot at the end of a run
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class PathsConfig:
    output_root: str = "outputs"
    data_root: str = "data"


# ---------------------------------------------------------------------------------------------------- run
@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    regularizer: RegularizerConfig = field(default_factory=RegularizerConfig)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    seed: int = option(0, ge=0)
    name: str = "run"
    plugins: list[str] = field(default_factory=list)  # modules imported at start (they register entries)


GROUP_SCHEMAS: dict[str, type] = {
    "regularizer": RegularizerConfig,
    "sparsity": SparsityConfig,
    "optim": OptimConfig,
    "trainer": TrainerConfig,
    "logger": LoggerConfig,
    "paths": PathsConfig,
}


def register_configs() -> None:
    """Register every schema in Hydra's ConfigStore under the ``schema`` group (``schema/trainer``,
    ``schema/CifarConfig``, ...), so a config file can declare one as its base with ``defaults: - /schema/...``."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for group, schema in GROUP_SCHEMAS.items():
        store.store(group="schema", name=group, node=schema)
    for schema in (*_subclasses(DatasetConfig), *_subclasses(MethodConfig), RunConfig):
        store.store(group="schema", name=schema.__name__, node=schema)


def _subclasses(base: type) -> list[type]:
    found = [base]
    for sub in base.__subclasses__():
        found.extend(_subclasses(sub))
    return found
