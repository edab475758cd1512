"""Typed configuration schemas: one dataclass per config group, registered in Hydra's ConfigStore.

The core library takes these dataclasses, not Hydra objects. Every field that has a limited range or a fixed set
of values says so in its metadata (``ge``/``gt``/``le``/``lt``/``choices``, or ``registry``: a name that must be
registered there); :mod:`lth_runner.config.validate` enforces it and reports a violation as one line naming the key,
the value and what is accepted. ``help`` is the one-line description ``lth-run --help`` shows.

This module imports neither torch nor anything heavy, so ``lth-run --help`` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from lth_runner.errors import ConfigError


def option(default: Any = MISSING, *, factory: Any = None, help: str = "", **checks: Any) -> Any:  # noqa: A002
    """A dataclass field with a description and validation metadata (``ge``, ``gt``, ``le``, ``lt``, ``choices``,
    ``items``, ``registry``)."""
    metadata = {**checks, "help": help} if help else checks
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


# --------------------------------------------------------------------------------------------------- model
@dataclass
class ModelConfig:
    """``arch`` selects the builder in the model registry; every other key is passed to it as a keyword argument
    (checked against the builder's option schema). ``name`` is the display name (for ``arch=timm``, the timm
    model)."""

    arch: str = MISSING
    name: str = MISSING
    kwargs: dict[str, Any] = field(default_factory=dict)


# Option schemas of the built-in model builders (``model.<key>``). They mirror the builders' keyword parameters
# (tests/test_models.py checks that they agree), so that options are checked without importing torch.
INITS = ("kaiming_normal", "glorot_normal")


@dataclass
class InitOptions:
    init: str = option("kaiming_normal", choices=INITS, help="weight initialisation")


@dataclass
class LogisticOptions:
    init: str = option("glorot_normal", choices=("zeros", *INITS), help="weight initialisation")


@dataclass
class MLPOptions:
    hidden: list[int] = option(factory=lambda: [100, 100], items=dict(ge=1), help="hidden layer widths")
    batch_norm: bool = option(False, help="BatchNorm after every hidden layer")
    dropout: float = option(0.0, ge=0.0, lt=1.0, help="dropout after every hidden layer")
    init: str = option("kaiming_normal", choices=INITS, help="weight initialisation")


@dataclass
class WidthMultOptions:
    width_mult: float = option(1.0, gt=0.0, help="scales every layer's channels")


@dataclass
class ResNetOptions:
    stem: str = option("auto", choices=("auto", "cifar", "imagenet"), help="input stem (auto: cifar up to 64 px)")
    width: int = option(64, ge=1, help="planes of the first stage")


@dataclass
class CifarResNetOptions:
    width: int = option(16, ge=1, help="planes of the first stage (16 in He et al.)")


@dataclass
class WideResNetOptions:
    depth: int = option(28, ge=10, help="6n+4 layers")
    width: int = option(10, ge=1, help="widening factor k")
    dropout: float = option(0.0, ge=0.0, lt=1.0, help="dropout inside blocks")


# ------------------------------------------------------------------------------------------------- dataset
@dataclass
class DatasetConfig:
    """Fields shared by every dataset; loaders add their own in a subclass."""

    name: str = MISSING
    root: str | None = option(None, help="folder holding the files (null: <paths.data_root>/<dataset name>)")
    val_size: float = option(0.1, ge=0.0, help="held out of training: a fraction (< 1) or a count (>= 1)")
    split_seed: int = option(0, ge=0, help="seed of the validation split (fixed across run seeds)")
    train_subset: int | None = option(None, ge=1, help="keep only this many training examples (quick runs)")
    test_subset: int | None = option(None, ge=1, help="evaluate on only this many test examples (quick runs)")
    classes: list[int] | None = option(
        None, items=dict(ge=0), help="keep only these classes, relabelled 0..K-1 in this order (e.g. [0, 1])"
    )
    label_noise: float = option(
        0.0,
        ge=0.0,
        le=1.0,
        help="fraction of training labels replaced by a random class, val/test clean (paper 002, Sec. 3.1)",
    )
    label_noise_mode: str = option(
        "other",
        choices=("other", "any"),
        help="other: each chosen label becomes another class; any: a uniform class that may be the true one",
    )
    augment: bool = option(False, help="random crop (with padding) + horizontal flip, image data only")
    crop_padding: int = option(4, ge=0, help="padding of the random crop")
    download: bool = option(True, help="download missing files when online")
    placement: str = option("auto", choices=("auto", "device", "cpu"), help="where in-memory tensors live")


@dataclass
class Mnist1dConfig(DatasetConfig):
    num_samples: int = option(5000, ge=100, help="examples generated in total")
    train_split: float = option(0.8, gt=0.0, lt=1.0, help="mnist1d's train fraction")
    generator_seed: int = option(42, ge=0, help="mnist1d's own seed (its default, so data match the paper's)")


@dataclass
class MnistConfig(DatasetConfig):
    test_holdout: int = option(2000, ge=1, help="test examples when the folder holds only the 10k test files")


@dataclass
class CifarConfig(DatasetConfig):
    augment: bool = option(True, help="random crop (with padding) + horizontal flip")
    verify_checksums: bool = option(True, help="md5 of the canonical files, or of a copy with recorded provenance")


@dataclass
class ImageFolderConfig(DatasetConfig):
    train_dir: str = option("train", help="training folder under root (one sub-folder per class)")
    test_dir: str = option("val", help="test folder under root")
    image_size: int = option(64, ge=8, help="crop size")
    resize: int | None = option(None, ge=8, help="shorter side before the centre crop at evaluation")
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    num_workers: int = option(4, ge=0, help="DataLoader worker processes")


@dataclass
class SyntheticConfig(DatasetConfig):
    shape: list[int] = option(factory=lambda: [3, 32, 32], items=dict(ge=1), help="shape of one example")
    num_classes: int = option(10, ge=2, help="number of classes")
    train_size: int = option(512, ge=2, help="training examples")
    test_size: int = option(256, ge=1, help="test examples")
    dtype: str = option("uint8", choices=("uint8", "float32"), help="uint8 (image-like) or float32 features")
    seed: int = option(0, ge=0, help="seed of the random tensors")


# -------------------------------------------------------------------------------------------------- method
@dataclass
class MethodConfig:
    """Fields shared by every method; each method registers its own subclass."""

    name: str = MISSING
    controls: list[str] = option(
        factory=list,
        items=dict(registry="controls"),
        help="controls trained beside the ticket: reinit (same mask, fresh init), random_prune (random mask)",
    )

    def check(self, run: RunConfig) -> None:
        """Cross-field checks against the whole configuration (raise a ConfigError); run before anything starts."""


@dataclass
class LTHConfig(MethodConfig):
    """Lottery ticket hypothesis (Frankle & Carbin 2019; late rewinding: Frankle et al. 2020)."""

    criterion: str = option(
        "magnitude",
        registry="criteria",
        help="pruning criterion (magnitude = large_final, small_final, random, snip, grasp)",
    )
    rewind_to: int = option(0, ge=0, help="0: rewind to the initialisation; k: to the state after k epochs/its")
    rewind_unit: str = option("epoch", choices=("epoch", "iteration"), help="unit of rewind_to")
    prune_from: str = option("final", choices=("final", "best_val"), help="which trained weights are ranked")
    control_rounds: str = option("all", choices=("all", "last"), help="rounds that train the controls")
    mask: str | None = option(
        None, help="lth: retrain this saved mask (a mask file or run directory) instead of pruning by the criterion"
    )
    mask_name: str | None = option(None, help="with method.mask a run directory: which of its masks (e.g. search)")
    record_train_drops: bool = option(
        False,
        help="per round: training accuracy after pruning, rewinding and retraining minus the trained network's "
        "(paper 002, Table 2; up to four evaluations of the training split per round)",
    )

    def check(self, run: RunConfig) -> None:
        if self.record_train_drops and self.mask is not None and self.rewind_to == 0:
            raise ConfigError(
                "method.record_train_drops",
                True,
                "false with method.mask and method.rewind_to=0 (no trained network to measure the drops against)",
            )
        if self.rewind_unit == "epoch" and self.rewind_to >= run.trainer.epochs:
            raise ConfigError(
                "method.rewind_to",
                self.rewind_to,
                f"fewer than the {run.trainer.epochs} epochs of training (trainer.epochs={run.trainer.epochs})",
            )
        if self.mask is not None and self.name != "lth":
            raise ConfigError("method.mask", self.mask, "null with method=lth_iter (a given mask is retrained once)")
        if self.prune_from == "best_val" and run.dataset.val_size == 0:
            raise ConfigError(
                "method.prune_from", self.prune_from, "final when dataset.val_size=0 (no validation split)"
            )


def _check_prunes(run: RunConfig) -> None:
    """Methods whose algorithm is a pruning schedule need something to prune."""
    if run.sparsity.target == 0:
        raise ConfigError("sparsity.target", 0, f"> 0: method={run.method.name} prunes by design")


@dataclass
class UniLTHConfig(MethodConfig):
    """UniLTH / UniDLTH (seed 000, Algorithm 1): early stopping + rewind, then pruning under a growing penalty."""

    patience: int = option(2, ge=1, help="phi: stage 1 stops when val loss has not improved for this many epochs")
    min_delta: float = option(0.0, ge=0.0, help="smallest decrease of val loss that counts as an improvement")
    rewind: int = option(2, ge=0, help="xi: stage 2 starts from the state this many epochs before the stop")
    stage1_max_epochs: int | None = option(None, ge=1, help="cap on stage 1 (null: trainer.epochs)")
    stage2_epochs: int | None = option(None, ge=1, help="E of the laws (null: what remains of trainer.epochs)")
    last_event: str = option(
        "at_end",
        choices=("at_end", "before_end"),
        help="at_end: events at M/psi * gamma (Algorithm 1); before_end: at M/(psi+1) * gamma, so the last "
        "interval of stage 2 trains the final mask (Sec. 3.3's rounds)",
    )
    reset_after_prune: bool = option(False, help="Sec. 3.3 'train, prune, reset' instead of one continuous stage 2")
    rewind_optimizer: bool = option(False, help="restore the optimizer state of the rewind epoch too")
    rewind_schedule: bool = option(True, help="the learning-rate schedule continues from the rewind epoch")
    weight_decay: str = option(
        "none", choices=("none", "stage2", "both"), help="stages where optim.weight_decay applies besides the penalty"
    )
    finetune_epochs: int | None = option(
        None,
        ge=0,
        help="epochs training the final mask after stage 2, without penalty (null: half of trainer.epochs, as "
        "DLTH's fine-tune; 0: Algorithm 1 as printed, which stops at the last event)",
    )
    criterion: str = option("magnitude", registry="criteria", help="pruning criterion")

    def check(self, run: RunConfig) -> None:
        _check_prunes(run)
        if run.dataset.val_size == 0:
            raise ConfigError("dataset.val_size", 0, f"> 0: {self.name} stops stage 1 on validation loss")
        cap = self.stage1_max_epochs or run.trainer.epochs
        if self.stage2_epochs is None and cap - self.rewind >= run.trainer.epochs:
            raise ConfigError(
                "method.stage2_epochs",
                None,
                f"an explicit number of epochs: a stage 1 that runs to its cap of {cap} epochs and rewinds "
                f"method.rewind={self.rewind} leaves none of trainer.epochs={run.trainer.epochs} for stage 2",
            )
        rounds = run.sparsity.rounds if run.sparsity.schedule == "geometric" else None
        if self.reset_after_prune and self.stage2_epochs is not None and rounds and rounds > self.stage2_epochs:
            raise ConfigError(
                "sparsity.rounds", rounds, f"at most {self.stage2_epochs} (the epochs of stage 2: one per round)"
            )

    def resolved_finetune_epochs(self, trainer_epochs: int) -> int:
        """``finetune_epochs``, with null read as DLTH's default share: half of the epochs (half up, >= 1)."""
        if self.finetune_epochs is not None:
            return self.finetune_epochs
        return max(1, (trainer_epochs + 1) // 2)


@dataclass
class DLTHConfig(MethodConfig):
    """DLTH / DLTH-Iter (Bai et al. 2022, random sparse network transformation, RST)."""

    grow_epochs: int | None = option(None, ge=1, help="penalty rises to its ceiling (null: 30% of trainer.epochs)")
    stabilize_epochs: int | None = option(None, ge=0, help="penalty held at the ceiling (null: 20% of epochs)")
    finetune_epochs: int | None = option(None, ge=0, help="after the removal (null: the rest of trainer.epochs)")
    finetune_restart: bool = option(True, help="fine-tune with a fresh optimizer and learning-rate schedule")
    transform_lr: float | None = option(None, gt=0.0, help="learning rate of the penalty phase (null: optim.lr)")
    transform_batch_size: int | None = option(None, ge=1, help="batch size of the penalty phase (null: trainer's)")
    transform_schedule: str | None = option(
        None, registry="schedules", help="learning-rate schedule of the penalty phase (null: optim.scheduler.name)"
    )
    zero_between_cycles: bool = option(True, help="dlth_iter: remove each cycle's set when the cycle ends")
    finetune_between_cycles: bool = option(True, help="dlth_iter: fine-tune after every cycle (else once at the end)")

    def check(self, run: RunConfig) -> None:
        _check_prunes(run)
        custom = [k for k in ("transform_lr", "transform_batch_size", "transform_schedule") if getattr(self, k)]
        if not self.finetune_restart and custom:
            raise ConfigError(
                "method.finetune_restart",
                False,
                f"true with method.{custom[0]} set (continuing the penalty phase's optimizer and schedule into the "
                f"fine-tune needs one recipe for both)",
            )
        if self.finetune_between_cycles and not self.zero_between_cycles:
            raise ConfigError(
                "method.finetune_between_cycles",
                True,
                "false with method.zero_between_cycles=false (a fine-tune trains a pruned network)",
            )
        phases = (self.grow_epochs or 0) + (self.stabilize_epochs or 0)
        if self.finetune_epochs is None and self.grow_epochs is not None and phases > run.trainer.epochs:
            raise ConfigError(
                "method.finetune_epochs",
                None,
                f"an explicit number of epochs (grow_epochs + stabilize_epochs = {phases} exceed "
                f"trainer.epochs={run.trainer.epochs})",
            )


@dataclass
class EarlyBirdConfig(MethodConfig):
    """Early-Bird tickets (You et al. 2020): find the mask early in dense training, prune, retrain."""

    detect: str = option("distance", choices=("distance", "fixed_epoch"), help="how the ticket epoch is chosen")
    threshold: float = option(0.1, ge=0.0, le=1.0, help="max normalised Hamming distance to the older masks")
    window: int = option(5, ge=2, help="FIFO of the last masks (the newest is compared with the others)")
    fixed_fraction: float = option(0.125, gt=0.0, le=1.0, help="fixed_epoch: the ticket epoch as a fraction of E")
    fixed_epoch: int | None = option(None, ge=1, help="fixed_epoch: the ticket epoch itself (wins over the fraction)")
    granularity: str = option("weight", choices=("weight", "channel"), help="unstructured weights or BN channels")
    bn_l1: float = option(1e-4, ge=0.0, help="channel variant: L1 penalty on BatchNorm scales during the search")
    retrain_from: str = option(
        "init", choices=("init", "eb", "reinit"), help="retrain from the initialisation, the EB weights, or afresh"
    )
    retrain_epochs: int | None = option(None, ge=1, help="retraining epochs (null: trainer.epochs)")

    def check(self, run: RunConfig) -> None:
        if self.detect == "fixed_epoch" and self.fixed_epoch is not None and self.fixed_epoch > run.trainer.epochs:
            raise ConfigError("method.fixed_epoch", self.fixed_epoch, f"at most trainer.epochs={run.trainer.epochs}")


@dataclass
class OneShotConfig(MethodConfig):
    """What every prune-once-and-fine-tune method (``lth_runner.methods.one_shot``) takes: the weights pruned, where
    weights compete, the fine-tuning length and rate."""

    pretrained: str | None = option(
        None, help="a run directory, a state-dict file, auto (trained once, cached) or timm:NAME (null: train it here)"
    )
    scope: str | None = option(
        "layerwise", choices=("layerwise", "global"), help="where weights compete (null: sparsity.scope)"
    )
    finetune_epochs: int | None = option(None, ge=0, help="fine-tuning epochs (null: trainer.epochs)")
    finetune_lr_scale: float = option(0.1, gt=0.0, help="fine-tuning learning rate = optim.lr * this")


@dataclass
class L1Config(OneShotConfig):
    """Seed 000's "L1" baseline: magnitude pruning of a pre-trained network, then fine-tuning (Li et al. 2017)."""

    structure: str = option("weight", choices=("weight", "filter"), help="per-weight magnitude or whole filters")


@dataclass
class OBDConfig(OneShotConfig):
    """Optimal Brain Damage (LeCun et al. 1989): a pre-trained network pruned once by OBD saliency, fine-tuned (paper
    004, Table 1). The Hessian estimator is ``sparsity.obd_hessian`` / ``obd_samples`` (shared with the criterion)."""

    scope: str | None = option(
        "global", choices=("layerwise", "global"), help="where weights compete (null: sparsity.scope)"
    )
    hessian_batches: int | None = option(
        8, ge=1, help="training batches estimating h_ii (null: sparsity.criterion_batches, 1 by default)"
    )


@dataclass
class PruneAtInitConfig(MethodConfig):
    """Pruning at initialisation (SNIP, Lee et al. 2019; GraSP, Wang et al. 2020): one-shot mask before training."""

    criterion: str = option("snip", registry="criteria", help="snip, grasp, magnitude, random, ...")
    train_epochs: int | None = option(None, ge=1, help="epochs training the sparse network (null: trainer.epochs)")

    def check(self, run: RunConfig) -> None:
        _check_prunes(run)


@dataclass
class DSTConfig(MethodConfig):
    """Dynamic sparse training from scratch: SET (Mocanu et al. 2018, ``grow=random``) and RigL (Evci et al. 2020,
    ``grow=gradient``), with RigL's schedule (Eq. 1, Algorithm 1)."""

    grow: str = option(
        "gradient", choices=("random", "gradient"), help="random (SET) or dense-gradient magnitude (RigL)"
    )
    distribution: str = option(
        "erk", choices=("erk", "uniform"), help="per-layer densities: Erdos-Renyi-Kernel or uniform"
    )
    erk_power_scale: float = option(1.0, gt=0.0, help="erk: the ratio raised to this power (<1 softer; RigL's code)")
    delta_t: int = option(100, ge=1, help="optimizer steps between mask updates")
    alpha: float = option(0.3, ge=0.0, le=1.0, help="fraction of each layer's connections the first update changes")
    decay: str = option("cosine", choices=("cosine", "constant"), help="update fraction alpha/2 (1 + cos(pi t/T_end))")
    t_end: float = option(0.75, ge=0.0, le=1.0, help="fraction of training after which the mask stays fixed")
    update_replaces_step: bool = option(True, help="an update step takes no weight step (RigL Algorithm 1)")
    save_every: int = option(10, ge=1, help="masks/update_XXXX.pt of every this many updates (and the last)")
    train_epochs: int | None = option(None, ge=1, help="epochs of sparse training (null: trainer.epochs)")

    def check(self, run: RunConfig) -> None:
        _check_prunes(run)


@dataclass
class MaskSearchConfig(MethodConfig):
    """Mask search on frozen weights: edge-popup (Ramanujan et al. 2020) and SR-popup (Lottery Jackpots, paper 004).

    ``sparsity.target`` is always the pruned fraction (allenai/hidden-networks' ``prune_rate`` is the kept one)."""

    search_epochs: int | None = option(None, ge=1, help="epochs training the scores (null: trainer.epochs)")
    pretrained: str | None = option(
        None,
        help="weights searched: null (the initialisation), a run dir or file, auto (trained once, cached), timm:NAME",
    )
    pretrain_epochs: int | None = option(
        None, ge=1, help="pretrained=auto: dense training epochs (null: trainer.epochs)"
    )
    weight_init: str = option(
        "model",
        choices=("model", "kaiming_normal", "signed_constant"),
        help="weights of a search from scratch: the model's init, Kaiming normal, or signed Kaiming constant",
    )
    score_init: str = option(
        "kaiming_uniform",
        help="kaiming_uniform (edge-popup) or a criterion (magnitude, snip, grasp, random) ranking the first mask",
    )
    layer_budget: str = option(
        "uniform",
        choices=("uniform", "global", "global_magnitude"),
        help="kept counts: every layer at the density, one global count, or per layer from a global |w| threshold",
    )
    dense_classifier: bool = option(False, help="leave the last prunable layer out of the search (kept dense)")
    eta: float = option(0.99, gt=0.0, lt=1.0, help="sr_popup: relaxed-mask value of the initially pruned entries")
    swap_schedule: str = option(
        "none",
        choices=("poly4", "inverse", "cosine", "constant", "none", "reference_epoch"),
        help="swaps per step as a fraction of the candidates: (1-t/T)^p, (t/T)^p, cosine, constant, none (all), "
        "or the reference CIFAR script's per-epoch ceil((1-e/E)^4)",
    )
    swap_power: float = option(4.0, gt=0.0, help="p of the poly4 / inverse swap schedules")
    swap_fraction: float = option(0.5, gt=0.0, le=1.0, help="constant swap schedule: the fraction of candidates")
    train: list[str] = option(
        factory=list, items=dict(choices=("weights", "bias", "bn_affine")), help="what trains besides the scores"
    )
    bn_stats: str = option("update", choices=("update", "frozen"), help="BatchNorm running statistics")
    finetune_epochs: int = option(0, ge=0, help="epochs training the found subnetwork's weights afterwards")

    def check(self, run: RunConfig) -> None:
        _check_prunes(run)
        self._check_score_init()
        if self.pretrained is not None and self.weight_init != "model":
            raise ConfigError("method.weight_init", self.weight_init, "model when method.pretrained is set")

    def _check_score_init(self) -> None:
        from lth_runner.catalog import CRITERIA
        from lth_runner.registry import did_you_mean

        accepted = ["kaiming_uniform", *CRITERIA.names()]
        if self.score_init not in accepted:
            raise ConfigError(
                "method.score_init",
                self.score_init,
                f"one of: {', '.join(accepted)}",
                hint=did_you_mean(self.score_init, accepted),
            )


@dataclass
class SLTEpsConfig(MaskSearchConfig):
    """Strong lottery tickets with epsilon-perturbation (Xiong, Liao & Kyrillidis, AISTATS 2023; paper 003, Alg. 1):
    projected gradient descent inside an l-infinity ball around the initialisation, then edge-popup on the
    perturbed, frozen weights for every sparsity of a list, keeping the mask with the best validation figure."""

    eps: float = option(0.01, ge=0.0, help="radius of the l-infinity ball around the initial weights")
    eps_mode: str = option(
        "absolute", choices=("absolute", "relative_std"), help="eps as is, or times each layer's initial std"
    )
    pgd_epochs: int | None = option(None, ge=1, help="epochs of projected gradient descent (null: trainer.epochs)")
    pgd_lr: float | None = option(None, gt=0.0, help="learning rate of the PGD phase (null: optim.lr)")
    pgd_momentum: float = option(0.0, ge=0.0, lt=1.0, help="momentum of the PGD phase (Alg. 1 has none)")
    perturb: str = option("prunable", choices=("prunable", "all"), help="which parameters PGD moves")
    sparsities: list[float] = option(
        factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
        items=dict(gt=0.0, lt=1.0),
        help="pruned fractions searched by edge-popup (Alg. 1 line 5)",
    )
    select_by: str = option(
        "val_loss", choices=("val_loss", "val_acc", "train_loss"), help="which sparsity's mask is kept (never test)"
    )

    def check(self, run: RunConfig) -> None:
        self._check_score_init()
        if not self.sparsities:
            raise ConfigError("method.sparsities", [], "at least one sparsity in (0, 1)")
        labels = [round(100 * s) for s in self.sparsities]  # masks/sNN.pt and stage popup/sNN per sparsity
        if len(set(labels)) != len(labels):
            raise ConfigError(
                "method.sparsities", self.sparsities, "distinct sparsities, at least 0.01 apart (one mask each)"
            )
        if self.pretrained is not None:
            raise ConfigError("method.pretrained", self.pretrained, "null with method=slt_eps (it perturbs the init)")
        if self.finetune_epochs:
            raise ConfigError("method.finetune_epochs", self.finetune_epochs, "0 with method=slt_eps")
        if self.select_by.startswith("val") and run.dataset.val_size == 0:
            raise ConfigError("method.select_by", self.select_by, "train_loss when dataset.val_size=0")


@dataclass
class RelaxedMaskConfig(MethodConfig):
    """A relaxed mask learned with the weights, thresholded, then retrained (paper 001, Fracastoro et al.,
    "Playing the Lottery With Concave Regularizers", Fig. 1; Continuous Sparsification, Savarese et al. 2020).
    The penalty is ``regularizer=mask_l1|mask_log``."""

    mask_param: str = option(
        "clip", choices=("clip", "sigmoid"), help="m itself projected to [0, 1] after every step, or sigmoid(beta s)"
    )
    mask_init: float | None = option(None, help="starting value of m (clip) or s (sigmoid) (null: 1.0 / 0.0)")
    final_temp: float = option(200.0, ge=1.0, help="sigmoid: beta at the last epoch of each round (from 1)")
    sigmoid_scale: bool = option(True, help="sigmoid: divide by sigmoid(mask_init) so m starts at 1 (as CS)")
    mask_lr: float | None = option(None, gt=0.0, help="learning rate of the mask (null: optim.lr), same schedule")
    mask_momentum: float | None = option(None, ge=0.0, lt=1.0, help="momentum of the mask (null: optim.momentum)")
    mask_weight_decay: float = option(0.0, ge=0.0, help="weight decay of the mask (CS: none)")
    search_epochs: int | None = option(None, ge=1, help="epochs of each relaxed-mask round (null: trainer.epochs)")
    rounds: int = option(1, ge=1, help="relaxed-mask rounds before the ticket is retrained")
    round_reset: str = option(
        "hard",
        choices=("hard", "soft"),
        help="between rounds: fix the round's thresholded mask and restart m on its survivors (hard), or CS's "
        "s <- min(s, mask_init) with nothing fixed (soft)",
    )
    threshold_mode: str = option(
        "target", choices=("target", "value"), help="keep the top count for sparsity.target exactly, or m > threshold"
    )
    threshold: float = option(0.5, gt=0.0, lt=1.0, help="threshold_mode=value: kept where m (sigmoid(beta s)) > this")
    scope: str | None = option(
        None, choices=("global", "layerwise"), help="threshold_mode=target: where masks compete (null: sparsity.scope)"
    )
    retrain_from: str = option(
        "rewind", choices=("rewind", "finetune"), help="retrain the ticket from a rewind point, or fine-tune"
    )
    rewind_to: int = option(2, ge=0, help="rewind: 0 = the initialisation, k = the weights after k epochs/iterations")
    rewind_unit: str = option("epoch", choices=("epoch", "iteration"), help="unit of rewind_to")
    rewind_schedule: str = option(
        "resume", choices=("resume", "restart"), help="rewind: learning-rate schedule resumes at k, or restarts at 0"
    )
    fold_mask: bool = option(True, help="finetune: start from m * theta (the relaxed network), not theta")
    retrain_epochs: int | None = option(None, ge=1, help="epochs retraining the ticket (null: trainer.epochs)")

    def check(self, run: RunConfig) -> None:
        if self.threshold_mode == "target":
            _check_prunes(run)
        init = self.initial_value()
        if self.mask_param == "clip" and not 0.0 < init <= 1.0:
            raise ConfigError("method.mask_init", self.mask_init, "in (0, 1] with method.mask_param=clip")
        if self.retrain_from == "rewind" and self.rewind_to > 0:
            epochs = self.search_epochs or run.trainer.epochs
            if self.rewind_unit == "epoch" and self.rewind_to >= epochs:
                raise ConfigError(
                    "method.rewind_to", self.rewind_to, f"fewer than the {epochs} epochs of the first relaxed round"
                )

    def initial_value(self) -> float:
        """Where the mask parameter starts: m = 1 (clip), s = 0 (sigmoid) unless ``mask_init`` says otherwise."""
        if self.mask_init is not None:
            return self.mask_init
        return 1.0 if self.mask_param == "clip" else 0.0


# --------------------------------------------------------------------------------------------- regularizer
@dataclass
class RegularizerConfig:
    """What ``regularizer.name`` selects: the growing L2 penalty ``alpha * ||w_S||^2`` of the UniLTH/DLTH family
    (seed 000, Sec. 3.3: laws ``linear``, ``loglaw``, ``explaw``, ``tanlaw``), or a penalty ``lambda * R(m)`` on the
    relaxed mask of ``method=relaxed_mask`` / ``cs`` (paper 001: ``mask_l1``, ``mask_log``)."""

    name: str = option(
        "none",
        registry="regularizers",
        help="none; growing L2 laws: linear, loglaw, explaw, tanlaw; mask penalties: mask_l1, mask_log",
    )
    ceiling: float | None = option(None, ge=0.0, help="laws: R_ceil (null: the method's paper default)")
    granularity: str = option("iteration", choices=("iteration", "epoch"), help="laws: how often alpha is updated")
    gradient_scale: float = option(2.0, gt=0.0, help="laws: gradient added, scale * alpha * w (2: d/dw alpha*w^2)")
    coefficient: float = option(1e-4, ge=0.0, help="mask penalties: lambda of lambda * R(m)")
    eps: float = option(0.01, gt=0.0, help="mask_log: eps of log(1 + m/eps)")
    normalize: bool = option(True, help="mask_log: divide by log(1 + 1/eps), so m = 1 costs 1 as with mask_l1")
    reduction: str = option("sum", choices=("sum", "mean"), help="mask penalties: R summed over entries, or averaged")


# ------------------------------------------------------------------------------------------------ sparsity
@dataclass
class SparsityConfig:
    """Where pruning goes. ``target`` is the final sparsity (fraction of prunable weights removed)."""

    target: float = option(0.8, ge=0.0, lt=1.0, help="final sparsity: the fraction of prunable weights removed")
    scope: str = option("global", choices=("global", "layerwise"), help="one ranking across layers, or per layer")
    exclude: list[str] = option(factory=list, help="fnmatch patterns of layers kept dense, e.g. ['fc3']")
    exclude_first: bool = option(False, help="keep the first conv/linear layer dense")
    exclude_last: bool = option(False, help="keep the classifier dense")
    rounds: int = option(10, ge=1, help="pruning rounds/events of iterative methods (psi)")
    schedule: str = option(
        "geometric", choices=("geometric", "fixed_fraction"), help="density r^(i/rounds), or `rate` per round"
    )
    rate: float = option(0.2, gt=0.0, lt=1.0, help="fraction of survivors removed per round (fixed_fraction)")
    criterion_batches: int = option(1, ge=1, help="snip: training batches whose gradients are summed")
    grasp_samples_per_class: int = option(10, ge=1, help="grasp: training examples per class (GraSP's default)")
    grasp_temperature: float = option(200.0, gt=0.0, help="grasp: logits divided by this (GraSP's T)")
    obd_hessian: str = option(
        "fisher", choices=("fisher", "hutchinson"), help="obd: Hessian diagonal, empirical Fisher or Hutchinson"
    )
    obd_samples: int | None = option(
        None, ge=1, help="obd: fisher examples (null: all of criterion_batches), hutchinson probes (null: 100)"
    )


# ------------------------------------------------------------------------------------------------ optimizer
@dataclass
class SchedulerConfig:
    name: str = option("constant", registry="schedules", help="constant, cosine, cosine_restarts, multistep")
    warmup_epochs: float = option(0.0, ge=0.0, help="linear warm-up from 0 to lr")
    min_lr: float = option(0.0, ge=0.0, help="floor of the cosine schedules")
    milestones: list[float] = option(factory=list, items=dict(gt=0.0), help="multistep: epochs of the decays")
    gamma: float = option(0.1, gt=0.0, help="multistep decay factor")
    restart_epochs: float | None = option(
        None, gt=0.0, help="cosine_restarts: first cycle length T_0 (null: the stage's own length)"
    )
    restart_mult: float = option(1.0, ge=1.0, help="cosine_restarts: cycle growth T_mult")
    granularity: str = option("iteration", choices=("iteration", "epoch"), help="rate updated per step or epoch")


@dataclass
class OptimConfig:
    name: str = option("sgd", registry="optimizers", help="sgd, adam, adamw")
    lr: float = option(0.1, gt=0.0, help="learning rate")
    momentum: float = option(0.9, ge=0.0, lt=1.0, help="SGD momentum")
    nesterov: bool = option(False, help="Nesterov momentum")
    weight_decay: float = option(0.0, ge=0.0, help="decoupled for adamw, L2 in the gradient otherwise")
    betas: list[float] = option(factory=lambda: [0.9, 0.999], items=dict(ge=0.0, lt=1.0), help="Adam betas")
    eps: float = option(1e-8, gt=0.0, help="Adam epsilon")
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)


# ------------------------------------------------------------------------------------------------- trainer
@dataclass
class WeightPenaltyConfig:
    """A penalty on the unpruned weights of every stage (paper 002, Sakamoto & Sato, Eq. 1):
    ``l2_init = lambda * ||m * (theta - theta_init)||^2``, ``l2_norm = lambda * ||m * theta||^2``. Not the
    ``regularizer`` group, which holds the growing laws and the relaxed-mask penalties of other methods."""

    name: str = option("none", choices=("none", "l2_init", "l2_norm"), help="none, l2_init or l2_norm (paper 002)")
    coefficient: float = option(2e-4, ge=0.0, help="lambda; the gradient added is 2 * lambda * m * (theta - ref)")
    stages: str = option(
        "all", choices=("all", "sparse"), help="all: every stage, dense round 0 included; sparse: pruned stages only"
    )


@dataclass
class SAMConfig:
    """Sharpness-aware minimisation restricted to the unpruned weights (Foret et al. 2021; paper 002, Sec. 3.2)."""

    enabled: bool = option(False, help="SAM: the step takes the gradient at theta + e, e = rho g/||g||, g = m grad")
    rho: float = option(0.05, gt=0.0, help="radius of the perturbation (paper 002: 0.05, 0.1, 0.2, 0.5)")
    bn: str = option(
        "freeze", choices=("freeze", "update"), help="BatchNorm running statistics in the second pass: kept, or updated"
    )


@dataclass
class NVRMConfig:
    """Neural variable risk minimisation (Xie et al. 2021, NVRM-SGD) restricted to the unpruned weights
    (paper 002, Sec. 3.2): Gaussian noise on the weights the gradients are taken at, off for evaluation."""

    enabled: bool = option(False, help="NVRM: after every step theta += eps_t - eps_(t-1), eps_t ~ N(0, b^2)")
    b: float = option(0.014, gt=0.0, help="std of the weight noise (paper 002: 0.014, 0.018, 0.022, 0.026)")
    noise_on: str = option(
        "unpruned", choices=("unpruned", "all"), help="unpruned prunable weights, or every trainable parameter"
    )


@dataclass
class TrainerConfig:
    epochs: int = option(10, ge=1, help="epochs per training stage")
    batch_size: int = option(128, ge=1, help="global batch size (split across DDP ranks)")
    eval_batch_size: int = option(1000, ge=1, help="batch size of evaluation")
    device: str = option("auto", help="auto, cpu, cuda, cuda:N or mps")
    devices: int = option(1, ge=1, help="SLURM: processes (one per device) per node")
    precision: str = option("fp32", choices=("fp32", "bf16"), help="fp32, or bf16 autocast")
    channels_last: bool = option(False, help="channels-last memory format (convnets on GPU)")
    compile: bool = option(False, help="torch.compile the model")
    deterministic: bool = option(False, help="deterministic kernels (slower)")
    label_smoothing: float = option(0.0, ge=0.0, lt=1.0, help="label smoothing of the cross-entropy")
    max_grad_norm: float | None = option(None, gt=0.0, help="gradient clipping (null: off)")
    eval_test: bool = option(True, help="test accuracy every epoch (else once at the end of each stage)")
    checkpoint_every: int = option(1, ge=1, help="epochs between resume checkpoints")
    keep_round_weights: bool = option(False, help="keep every round's final weights, not only the latest")
    num_threads: int | None = option(None, ge=1, help="CPU threads of torch (null: torch's default)")
    progress_seconds: float = option(30.0, gt=0.0, help="outside a terminal: a progress line at least this often")
    penalty: WeightPenaltyConfig = field(default_factory=WeightPenaltyConfig)
    sam: SAMConfig = field(default_factory=SAMConfig)
    nvrm: NVRMConfig = field(default_factory=NVRMConfig)


# -------------------------------------------------------------------------------------------------- logger
@dataclass
class WandbConfig:
    """Weights & Biases. ``auto``: ``$WANDB_MODE`` if set, else online with credentials and offline without;
    never prompts. Runs are written under the run's output directory."""

    mode: str = option("auto", choices=("auto", "online", "offline", "disabled"), help="W&B mode")
    project: str = option("lth-runner", help="W&B project")
    entity: str | None = option(None, help="W&B entity (null: your default)")
    group: str | None = option(None, help="W&B group (null: the sweep's name for multirun jobs)")
    tags: list[str] = option(factory=list, help="tags added to method/model/dataset/sparsity/seed")


@dataclass
class LoggerConfig:
    console: str = option("auto", choices=("auto", "rich", "plain", "none"), help="console output")
    plots: bool = option(True, help="accuracy plot at the end of a run")
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class PathsConfig:
    output_root: str = option("outputs", help="where runs and sweeps are written ($LTH_OUTPUT_ROOT)")
    data_root: str = option("data", help="where datasets are looked for and cached ($LTH_DATA_ROOT)")


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
    seed: int = option(0, ge=0, help="run seed (initialisation, data order, random masks)")
    name: str = option("run", help="run name (the run folder's parent)")
    plugins: list[str] = option(factory=list, help="modules imported first; they may register entries")


# Settings that change how a run is executed, stored or displayed, not what it computes (a key or a prefix of
# keys). A run resumes across changes of these, the report does not tell runs apart by them, and sweep folder
# names leave them out.
RESULT_NEUTRAL_KEYS: tuple[str, ...] = (
    "name",
    "plugins",
    "logger",
    "paths",
    "dataset.root",
    "dataset.download",
    "dataset.placement",
    "trainer.device",
    "trainer.devices",
    "trainer.num_threads",
    "trainer.checkpoint_every",
    "trainer.keep_round_weights",
    "trainer.compile",
    "trainer.eval_batch_size",
    "trainer.progress_seconds",
)


def is_result_neutral(key: str, neutral: tuple[str, ...] = RESULT_NEUTRAL_KEYS) -> bool:
    """Whether the dotted ``key`` is one of ``neutral`` or lies under one of them."""
    return any(key == n or key.startswith(n + ".") for n in neutral)


GROUP_SCHEMAS: dict[str, type] = {
    "regularizer": RegularizerConfig,
    "sparsity": SparsityConfig,
    "optim": OptimConfig,
    "trainer": TrainerConfig,
    "logger": LoggerConfig,
    "paths": PathsConfig,
}
