"""Which tensors are prunable: the single place that decides it.

By default the weights of every convolution and linear layer are prunable; biases and normalisation parameters
never are. The sparsity config removes layers by name pattern or by position (the first layer, usually the stem,
and the last, usually the classifier), in ``model.modules()`` order.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

from torch import nn

PRUNABLE_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def unwrap(model: nn.Module) -> nn.Module:
    """The module that owns the parameters, under DistributedDataParallel and torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def prunable_parameters(
    model: nn.Module,
    *,
    exclude: Sequence[str] = (),
    exclude_first: bool = False,
    exclude_last: bool = False,
) -> dict[str, nn.Parameter]:
    """Ordered ``{parameter name: weight}`` of the layers that pruning may touch.

    ``exclude`` holds fnmatch patterns matched against the parameter name (``"fc3.weight"``, ``"layer1.*"``) or the
    layer name (``"fc3"``).
    """
    candidates = [
        (f"{name}.weight" if name else "weight", module.weight)
        for name, module in unwrap(model).named_modules()
        if isinstance(module, PRUNABLE_LAYERS) and isinstance(getattr(module, "weight", None), nn.Parameter)
    ]
    if exclude_first and candidates:
        candidates = candidates[1:]
    if exclude_last and candidates:
        candidates = candidates[:-1]
    return {
        name: weight
        for name, weight in candidates
        if not any(fnmatchcase(name, pattern) or fnmatchcase(name.rsplit(".", 1)[0], pattern) for pattern in exclude)
    }


def from_sparsity_config(model: nn.Module, sparsity: object) -> dict[str, nn.Parameter]:
    """:func:`prunable_parameters` with the exclusions of a :class:`~lth_runner.config.schema.SparsityConfig`."""
    return prunable_parameters(
        model,
        exclude=getattr(sparsity, "exclude", ()),
        exclude_first=getattr(sparsity, "exclude_first", False),
        exclude_last=getattr(sparsity, "exclude_last", False),
    )
