"""Early-Bird tickets (``method=eb``).

You et al., "Drawing Early-Bird Tickets: Towards More Efficient Training of Deep Networks", ICLR 2020, Sec. 3-4,
and their reference code (GATECH-EIC/Early-Bird-Tickets, ``main.py``): during dense training, the pruning mask at
the target ratio is drawn at the start of every epoch; a FIFO keeps the last ``window`` (5) masks, and the
Early-Bird ticket has emerged when the newest mask is within ``threshold`` (0.1) normalised Hamming distance
(``1 - mean(m_newest == m_j)``) of every older mask in the FIFO. The network is then pruned one-shot with that mask
and retrained. Seed paper 000 uses EB as a baseline with the ticket drawn at a fixed epoch, E/8
(``method.detect=fixed_epoch``).

Stages: ``search/dense`` (dense training, stopped at the detection; its final weights are the EB weights) and
``retrain/ticket`` (the mask enforced, ``retrain_epochs`` from step 0 with a fresh optimizer and schedule).

Choices where the paper or the reference code leave room (also in docs/methods.md):
- ``granularity=weight`` (default) draws unstructured global (or ``sparsity.scope=layerwise``) magnitude masks over
  the prunable weights at ``sparsity.target``, so the ticket is comparable with LTH's; the distance is normalised
  by the number of prunable weights. ``granularity=channel`` is the paper's: channel masks from |BatchNorm scale|
  with one global threshold at the target fraction of *channels*, with an L1 subgradient ``bn_l1 * sign(gamma)`` on
  the BatchNorm scales during the search (the reference's ``--sr``, ``s=1e-4``); the distance is over the
  concatenated channel masks.
- Epoch ``k`` in the logs and the summary counts the epochs trained when the mask was drawn: epoch 0's mask is the
  initialisation's (as in the reference, which draws before each epoch's training); the first possible detection is
  at epoch ``window - 1``. The search stops at the first detection (the reference keeps training and saves a
  checkpoint at each detection) and the EB weights are the ones at that point. When no detection happens within
  ``trainer.epochs``, the last mask (after the last epoch) is used and ``eb.found`` is false.
- ``detect=fixed_epoch`` stops at ``fixed_epoch`` epochs when it is set, else at
  ``floor(fixed_fraction * trainer.epochs)`` (at least 1). Seed 000 says "37 epochs (1/8 of the total epochs)"
  for 200-epoch runs; 37 is 1/8 of 300, so the two halves disagree: ``method=eb_fixed`` is E/8 (25 of 200) and
  ``method=eb_fixed_paper`` is the absolute epoch 37 that the paper reports using (the Table 1 presets' sweep
  rows). The distances are still logged, and ``eb.criterion_met`` says whether the distance criterion held then.
- Channel masks keep an exact count, ``kept_count(channels, 1 - target)``, chosen by one global threshold on
  |gamma| (ties broken towards earlier channels; the reference's ``|gamma| > y[int(total*p)]`` keeps
  ``total - int(total*p) - 1`` channels without ties, fewer with ties); a layer that would lose all its channels
  keeps its largest one, at the expense of the globally smallest kept channels. Only BatchNorm layers fed directly
  by a prunable conv/linear layer are candidates (found by tracing one forward pass), so ``sparsity.exclude*`` also
  protects the BN layer after an excluded layer. Pruning a channel masks every weight of the producing layer's
  filter and the BN scale and shift of the channel (the shift would otherwise leak a constant); the consumers'
  input weights of a pruned channel are left alone and counted as kept (in a conv-BN-ReLU chain they only see
  zeros; after a residual sum the channel still carries the shortcut). ``final.density`` is the weight density of
  the prunable set, ``eb.channel_density`` the fraction of candidate channels kept.
- The L1 subgradient is applied to the candidate BatchNorm layers only (the reference applies it to every
  ``BatchNorm2d``; with no ``sparsity.exclude*`` and a plain conv-BN network the two coincide), and only while
  searching.
- Retraining starts from the seeded initialisation the search started from (``retrain_from=init``, the default:
  seed 000 uses EB "for LTH", i.e. the ticket is the early mask on the original initialisation), from the EB
  weights (``retrain_from=eb``), or from a fresh seeded initialisation (``retrain_from=reinit``: the reference's
  retraining scripts, ``main_c.py`` / ``main_scratch.py --scratch pruned.pth.tar``, build the pruned architecture
  with a fresh random initialisation and copy only the channel indexes; ``main_c.py`` then trains from
  ``--start-epoch``, the EB epoch, to the end of the original schedule with ``-sr`` on). Retraining always uses a
  fresh optimizer and learning-rate schedule over ``retrain_epochs`` (default ``trainer.epochs``), without the BN
  L1 term.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lth_runner.config.schema import EarlyBirdConfig
from lth_runner.errors import ConfigError
from lth_runner.methods.controls import controls_from_init
from lth_runner.session import RunContext
from lth_runner.sparse import CRITERIA, Mask, MaskEnforcer, ScoreContext, kept_count, prune_to_density, select_top
from lth_runner.sparse.prunable import PRUNABLE_LAYERS, unwrap
from lth_runner.sparse.schedule import remaining_fraction
from lth_runner.summary import Summary, round_summary
from lth_runner.training.trainer import EnforceMask, Stage, StageResult

SEARCH_KEY = "search/dense"
RETRAIN_KEY = "retrain/ticket"


# ----------------------------------------------------------------------------------------------- detection
class EarlyBirdDetector:
    """FIFO of the last ``window`` masks; the ticket has emerged when the FIFO is full and the newest mask is within
    ``threshold`` normalised Hamming distance of every older one (You et al. 2020, Sec. 4.1)."""

    def __init__(self, window: int, threshold: float) -> None:
        if window < 2:
            raise ValueError("window must be >= 2")
        self.window, self.threshold = window, threshold
        self.masks: list[Mask] = []
        self.epochs: list[int] = []
        self.distances: list[float] | None = None  # newest vs each older mask, oldest first (None until full)

    @property
    def full(self) -> bool:
        return len(self.masks) == self.window

    @property
    def emerged(self) -> bool:
        return self.distances is not None and all(d <= self.threshold for d in self.distances)

    @property
    def max_distance(self) -> float | None:
        return max(self.distances) if self.distances is not None else None

    def push(self, mask: Mask, epoch: int) -> bool:
        """Add the mask drawn at ``epoch``; return whether the ticket has emerged."""
        self.masks.append(mask)
        self.epochs.append(epoch)
        if len(self.masks) > self.window:
            self.masks.pop(0)
            self.epochs.pop(0)
        newest = self.masks[-1]
        self.distances = [newest.hamming_fraction(m) for m in self.masks[:-1]] if self.full else None
        return self.emerged

    def state_dict(self) -> dict[str, Any]:
        return {"masks": [m.state_dict() for m in self.masks], "epochs": list(self.epochs), "distances": self.distances}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        self.masks = [Mask(m).to(device) for m in state["masks"]]
        self.epochs = list(state["epochs"])
        self.distances = None if state["distances"] is None else list(state["distances"])


def fixed_detection_epoch(fraction: float, epochs: int) -> int:
    """``floor(fraction * epochs)``, at least 1 and at most ``epochs`` (seed 000: 300 epochs / 8 -> 37)."""
    return max(1, min(epochs, math.floor(fraction * epochs + 1e-9)))


# ----------------------------------------------------------------------------------------------- channels
@dataclass(frozen=True)
class ChannelGroup:
    """A BatchNorm layer ``bn`` fed directly by the prunable layer whose weight is ``producer``."""

    bn: str
    producer: str
    channels: int


def channel_groups(
    model: nn.Module, params: dict[str, nn.Parameter], input_shape: tuple[int, ...]
) -> list[ChannelGroup]:
    """The BatchNorm layers whose input is the output of a prunable layer, found by tracing one forward pass (eval
    mode, no state change). A producer that feeds more than one BatchNorm layer is left out."""
    root = unwrap(model)
    weight_names = {id(p): n for n, p in params.items()}
    outputs: dict[int, tuple[str, torch.Tensor]] = {}
    feeds: dict[str, str] = {}
    handles = []

    def record_output(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor):
                outputs[id(output)] = (name, output)

        return hook

    def record_input(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any) -> None:
            x = inputs[0] if inputs else None
            entry = outputs.get(id(x))
            if entry is not None and entry[1] is x:
                feeds[name] = entry[0]

        return hook

    for name, module in root.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, PRUNABLE_LAYERS) and id(weight) in weight_names:
            handles.append(module.register_forward_hook(record_output(weight_names[id(weight)])))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and isinstance(weight, nn.Parameter):
            handles.append(module.register_forward_pre_hook(record_input(name)))
    was_training = root.training
    device = next(root.parameters()).device
    try:
        root.eval()
        with torch.no_grad():
            root(torch.zeros(2, *input_shape, device=device))
    finally:
        root.train(was_training)
        for handle in handles:
            handle.remove()
    producers = list(feeds.values())
    groups = []
    for name, module in root.named_modules():  # module order: deterministic
        producer = feeds.get(name)
        if producer is None or producers.count(producer) > 1 or params[producer].shape[0] != module.num_features:
            continue
        groups.append(ChannelGroup(name, producer, int(module.num_features)))
    return groups


def select_channels(scores: dict[str, torch.Tensor], density: float, *, scope: str = "global") -> Mask:
    """Keep ``density`` of the channels by score, never emptying a layer.

    ``global``: exactly ``kept_count(total, density)`` channels (at least one per layer) above one threshold; a
    layer that would be emptied keeps its best channel, and the globally lowest kept channels elsewhere give way.
    ``layerwise``: ``kept_count(n, density)`` (at least 1) of each layer."""
    if scope == "layerwise":
        return Mask({n: select_top({n: s}, max(1, kept_count(s.numel(), density)))[n] for n, s in scores.items()})
    if scope != "global":
        raise ValueError(f"unknown scope {scope!r}: expected 'global' or 'layerwise'")
    total = sum(s.numel() for s in scores.values())
    keep = max(kept_count(total, density), len(scores))
    forced: set[str] = set()
    while True:
        adjusted = {}
        for name, score in scores.items():
            score = score.detach().float().clone()
            if name in forced:
                score[int(score.argmax())] = math.inf
            adjusted[name] = score
        mask = select_top(adjusted, keep)
        empty = {name for name, keep_layer in mask.items() if not bool(keep_layer.any())}
        if not empty:
            return mask
        forced |= empty


class ChannelPruning:
    """The channel structure of a model: draws channel masks from |BN scale| and expands them to weight masks (the
    producing layer's filters) and BatchNorm masks (scale and shift)."""

    def __init__(self, model: nn.Module, params: dict[str, nn.Parameter], groups: list[ChannelGroup]) -> None:
        self.params, self.groups = params, groups
        modules = dict(unwrap(model).named_modules())
        self.bn_modules = {g.bn: modules[g.bn] for g in groups}
        self.bn_params: dict[str, nn.Parameter] = {}
        for g in groups:
            bn = self.bn_modules[g.bn]
            self.bn_params[f"{g.bn}.weight"] = bn.weight
            if isinstance(bn.bias, nn.Parameter):
                self.bn_params[f"{g.bn}.bias"] = bn.bias

    @property
    def total_channels(self) -> int:
        return sum(g.channels for g in self.groups)

    def bn_scales(self) -> list[nn.Parameter]:
        return [self.bn_modules[g.bn].weight for g in self.groups]

    def draw(self, density: float, scope: str) -> Mask:
        scores = {g.bn: self.bn_modules[g.bn].weight.detach().abs() for g in self.groups}
        return select_channels(scores, density, scope=scope)

    def weight_mask(self, channels: Mask) -> Mask:
        masks = {name: torch.ones_like(p, dtype=torch.bool) for name, p in self.params.items()}
        for g in self.groups:
            keep = channels[g.bn].to(masks[g.producer].device)
            shape = (-1,) + (1,) * (masks[g.producer].dim() - 1)
            masks[g.producer] = masks[g.producer] & keep.view(shape)
        return Mask(masks)

    def bn_mask(self, channels: Mask) -> Mask:
        masks = {}
        for g in self.groups:
            for suffix in ("weight", "bias"):
                name = f"{g.bn}.{suffix}"
                if name in self.bn_params:
                    masks[name] = channels[g.bn].to(self.bn_params[name].device)
        return Mask(masks)


class BatchNormL1:
    """Hook: the L1 subgradient ``scale * sign(gamma)`` added to the BatchNorm scales' gradients (network slimming,
    Liu et al. 2017; the reference's ``updateBN``)."""

    def __init__(self, scales: list[nn.Parameter], scale: float) -> None:
        self.scales, self.scale = scales, scale

    def before_step(self, trainer: Any) -> None:
        for gamma in self.scales:
            if gamma.grad is not None:
                gamma.grad.add_(torch.sign(gamma.detach()), alpha=self.scale)


# ----------------------------------------------------------------------------------------------- search hook
class EarlyBirdSearch:
    """Hook of the search stage: draws the mask at the start of training and after every epoch, feeds the detector
    and stops the stage at the detection (or the fixed epoch). The decided mask and the detection record are saved
    at once (``masks/eb.pt``, ``checkpoints/eb_search.pt``), before the stage is marked complete."""

    def __init__(
        self,
        run: RunContext,
        draw: Callable[[], Mask],
        detector: EarlyBirdDetector,
        *,
        stop_epoch: int | None,
        max_epochs: int,
        save: Callable[[Mask, dict[str, Any]], None],
    ) -> None:
        self.run, self.draw, self.detector = run, draw, detector
        self.stop_epoch, self.max_epochs, self.save = stop_epoch, max_epochs, save
        self.observed: int | None = None  # the last epoch whose mask was drawn
        self.decision: dict[str, Any] | None = None

    def _observe(self, trainer: Any) -> None:
        epoch = trainer.step // trainer.steps_per_epoch
        if self.observed == epoch:
            return
        self.detector.push(self.draw(), epoch)
        self.observed = epoch

    def on_stage_start(self, trainer: Any) -> None:
        self._observe(trainer)  # epoch 0: the initialisation's mask

    def log_fields(self, trainer: Any) -> dict[str, Any]:
        self._observe(trainer)
        d = self.detector
        return {"eb_max_distance": d.max_distance, "eb_distances": d.distances, "eb_emerged": d.emerged}

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> bool:
        self._observe(trainer)
        epoch, d = self.observed, self.detector
        assert epoch is not None
        if self.stop_epoch is not None:
            decide, found = epoch >= self.stop_epoch, True
        else:
            decide, found = d.emerged, d.emerged
        if not decide and epoch < self.max_epochs:
            return False
        self.decision = {
            "found": bool(found),
            "criterion_met": d.emerged,
            "epoch": epoch,
            "distances": d.distances,
            "max_distance": d.max_distance,
            "fifo_epochs": list(d.epochs),
        }
        self.save(d.masks[-1], self.decision)
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"detector": self.detector.state_dict(), "observed": self.observed, "decision": self.decision}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.detector.load_state_dict(state["detector"], self.run.device)
        self.observed, self.decision = state["observed"], state["decision"]


# ----------------------------------------------------------------------------------------------- method
def early_bird(run: RunContext) -> Summary:
    """Search for the Early-Bird mask during dense training, prune one-shot, retrain."""
    cfg, method = run.cfg, run.cfg.method
    assert isinstance(method, EarlyBirdConfig)
    epochs = cfg.trainer.epochs
    retrain_epochs = method.retrain_epochs or epochs
    density = remaining_fraction(cfg.sparsity.target)
    scope = cfg.sparsity.scope

    model = run.new_model("init")
    params = run.prunable(model)
    total = sum(p.numel() for p in params.values())
    init_state = {k: v.detach().clone() for k, v in unwrap(model).state_dict().items()}
    channels: ChannelPruning | None = None
    if method.granularity == "channel":
        groups = channel_groups(model, params, tuple(run.data.spec.input_shape))
        if not groups:
            raise ConfigError(
                "method.granularity",
                "channel",
                f"weight: {cfg.model.name} has no BatchNorm layer fed directly by a prunable conv/linear layer",
            )
        channels = ChannelPruning(model, params, groups)
    stop_epoch = detection_epoch(method, epochs) if method.detect == "fixed_epoch" else None
    run.log_start(
        total,
        densities=[density],
        granularity=method.granularity,
        channels=channels.total_channels if channels else None,
    )

    # ---- search: dense training with a mask drawn every epoch
    if channels is not None:
        draw = lambda: channels.draw(density, scope)  # noqa: E731
    else:
        magnitude = CRITERIA.get("magnitude")
        draw = lambda: prune_to_density(magnitude(params, ScoreContext()), density, scope=scope)  # noqa: E731

    def save(mask: Mask, decision: dict[str, Any]) -> None:
        run.save_mask("eb_channels" if channels is not None else "eb", mask)
        if channels is not None:
            run.save_mask("eb", channels.weight_mask(mask))
        run.save_state_tensors("eb_search", decision)

    fresh = run.completed(SEARCH_KEY) is None
    search_hook = EarlyBirdSearch(
        run,
        draw,
        EarlyBirdDetector(method.window, method.threshold),
        stop_epoch=stop_epoch,
        max_epochs=epochs,
        save=save,
    )
    hooks: list[Any] = [search_hook]
    if channels is not None and method.bn_l1 > 0:
        hooks.append(BatchNormL1(channels.bn_scales(), method.bn_l1))
    search = run.train(Stage(SEARCH_KEY, 0, "dense", epochs), model, None, hooks, keep_weights=True)

    mask, decision = run.saved_mask("eb"), run.load_state_tensors("eb_search")
    channel_mask = run.saved_mask("eb_channels") if channels is not None else None
    if mask is None or decision is None or (channels is not None and channel_mask is None):
        raise RuntimeError(f"{run.output_dir}: the search stage finished but its Early-Bird mask was not saved")
    if fresh:
        _announce(run, mask, decision, method)
    results: list[StageResult] = [search]
    details = {"eb": _eb_section(method, decision, mask, channel_mask)}
    rounds = [round_summary(0, total, total, search)]

    def summarise(final: StageResult, kept: int, index: int, controls: dict, complete: bool) -> Summary:
        return run.write_summary(total, results=results, final=final, kept=kept, round_index=index, rounds=rounds,
                                 controls=controls, details=details, complete=complete,
                                 ticket_found_epoch=decision["epoch"])  # fmt: skip

    # Until the ticket is retrained, the network delivered so far is the dense one of the search (as in LTH).
    summarise(search, total, 0, {}, complete=False)

    # ---- retrain the ticket
    if run.completed(RETRAIN_KEY) is None:
        if method.retrain_from == "eb":
            start = run.load_weights(SEARCH_KEY)
        elif method.retrain_from == "reinit":
            start = unwrap(run.new_model("reinit")).state_dict()
        else:
            start = init_state
        unwrap(model).load_state_dict(start)
    enforcer = MaskEnforcer(params, mask)
    extra: list[Any] = []
    if channels is not None and channel_mask is not None:
        extra.append(EnforceMask(MaskEnforcer(channels.bn_params, channels.bn_mask(channel_mask))))
    retrain = run.train(Stage(RETRAIN_KEY, 1, "ticket", retrain_epochs, density=mask.density()), model, enforcer, extra)
    results.append(retrain)
    run.release_weights(SEARCH_KEY)
    controls = controls_from_init(
        run, round_index=1, mask=mask, model=model, enforcer=enforcer, init_state=init_state, results=results
    )
    rounds.append(round_summary(1, mask.num_kept(), total, retrain, controls))
    return summarise(retrain, mask.num_kept(), 1, controls, complete=True)


def detection_epoch(method: EarlyBirdConfig, epochs: int) -> int:
    """The fixed ticket epoch: ``method.fixed_epoch`` when set (at most ``epochs``), else the fraction's."""
    if method.fixed_epoch is None:
        return fixed_detection_epoch(method.fixed_fraction, epochs)
    return min(method.fixed_epoch, epochs)  # at most trainer.epochs (EarlyBirdConfig.check)


def _announce(run: RunContext, mask: Mask, decision: dict[str, Any], method: EarlyBirdConfig) -> None:
    if method.detect == "fixed_epoch":
        text = f"early-bird ticket drawn at the fixed epoch {decision['epoch']}"
    elif decision["found"]:
        text = f"early-bird ticket found at epoch {decision['epoch']} (max distance {decision['max_distance']:.4f})"
    else:
        text = f"no early-bird ticket within {decision['epoch']} epochs: the last mask is used"
    run.message(text)
    run.log_prune(mask, round=1)


def _eb_section(
    method: EarlyBirdConfig, decision: dict[str, Any], mask: Mask, channel_mask: Mask | None
) -> dict[str, Any]:
    section = {
        "detect": method.detect,
        "found": decision["found"],
        "criterion_met": decision["criterion_met"],
        "epoch": decision["epoch"],
        "distances": decision["distances"],
        "max_distance": decision["max_distance"],
        "threshold": method.threshold,
        "window": method.window,
        "granularity": method.granularity,
        "retrain_from": method.retrain_from,
        "weight_density": mask.density(),
    }
    if method.detect == "fixed_epoch":
        section["fixed_fraction"] = method.fixed_fraction
        section["fixed_epoch"] = method.fixed_epoch
    if channel_mask is not None:
        section.update(
            channel_density=channel_mask.density(),
            channels_kept=channel_mask.num_kept(),
            channels_total=channel_mask.numel(),
            layer_channels_kept=channel_mask.layer_kept(),
            bn_l1=method.bn_l1,
        )
    return section
