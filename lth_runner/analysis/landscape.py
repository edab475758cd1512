"""The 1-D training-loss landscape along a direction in a subnetwork's parameter space (paper 002, Fig. 2: along
the top Hessian eigenvector): ``L(theta + alpha v)`` for ``alpha`` on a grid, ``v`` a unit vector that is zero on
pruned entries, so only the subnetwork moves. The weights are restored exactly afterwards."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_ALPHAS = tuple(round(-0.5 + 0.05 * i, 2) for i in range(21))  # PyHessian's tutorial grid, -0.5 .. 0.5


@dataclass
class Landscape:
    alphas: list[float]
    losses: list[float]
    accuracies: list[float]


@torch.no_grad()
def loss_along(
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    direction: Sequence[torch.Tensor],
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    alphas: Sequence[float] = DEFAULT_ALPHAS,
) -> Landscape:
    """Mean cross-entropy and accuracy over ``batches`` at ``theta + alpha * direction`` for every ``alpha``."""
    tensors = list(params.values())
    original = [t.detach().clone() for t in tensors]
    was_training = model.training
    model.eval()
    losses, accuracies = [], []
    count = sum(int(y.numel()) for _, y in batches)
    try:
        for alpha in alphas:
            for tensor, start, step in zip(tensors, original, direction):
                tensor.copy_(start + alpha * step)
            loss = correct = 0.0
            for x, y in batches:
                logits = model(x)
                loss += float(F.cross_entropy(logits, y, reduction="sum"))
                correct += float((logits.argmax(1) == y).sum())
            losses.append(loss / count)
            accuracies.append(correct / count)
    finally:
        for tensor, start in zip(tensors, original):
            tensor.copy_(start)
        model.train(was_training)
    return Landscape([float(a) for a in alphas], losses, accuracies)


def plot_landscape(landscape: Landscape, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot(landscape.alphas, landscape.losses, marker="o", markersize=3)
    ax.set(xlabel="alpha (along the top eigenvector, unpruned weights only)", ylabel="training loss", title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
