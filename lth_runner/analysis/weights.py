"""Where a ticket's weights went: the distance from the initialisation and the distribution of the unpruned
weights (paper 002, Sec. 3.3 and Fig. 8, which plots the 20/40/60/80% quantiles of the trained unpruned weights)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

QUANTILES = (0.2, 0.4, 0.6, 0.8)


def distance_from_init(
    weights: Mapping[str, torch.Tensor], init: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]
) -> dict[str, object]:
    """``||m * (theta - theta_init)||_2`` in total and per layer, and relative to ``||m * theta_init||_2``."""
    per_layer, total, reference = {}, 0.0, 0.0
    for name, mask in masks.items():
        delta = float(((weights[name] - init[name]) * mask).pow(2).sum())
        base = float((init[name] * mask).pow(2).sum())
        per_layer[name] = {"l2": delta**0.5, "relative": (delta / base) ** 0.5 if base else None}
        total, reference = total + delta, reference + base
    return {"l2": total**0.5, "relative": (total / reference) ** 0.5 if reference else None, "per_layer": per_layer}


def unpruned_quantiles(
    weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], quantiles: tuple[float, ...] = QUANTILES
) -> dict[str, dict[str, float]]:
    """Quantiles of each layer's unpruned weights (and of all of them)."""
    out: dict[str, dict[str, float]] = {}
    pooled = []
    for name, mask in masks.items():
        kept = weights[name][mask].detach().float().flatten()
        pooled.append(kept)
        if kept.numel():
            out[name] = {f"q{round(100 * q)}": float(torch.quantile(kept, q)) for q in quantiles}
    everything = torch.cat(pooled) if pooled else torch.zeros(0)
    if everything.numel():
        out["all"] = {f"q{round(100 * q)}": float(torch.quantile(everything, q)) for q in quantiles}
    return out


def plot_distribution(
    weights: Mapping[str, torch.Tensor], init: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], path: str
) -> None:
    """Histograms of the unpruned weights, trained and initial, pooled over layers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trained = torch.cat([weights[n][m].flatten() for n, m in masks.items()]).float()
    start = torch.cat([init[n][m].flatten() for n, m in masks.items()]).float()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.hist(start.numpy(), bins=80, alpha=0.5, label="initial", density=True)
    ax.hist(trained.numpy(), bins=80, alpha=0.5, label="trained", density=True)
    ax.set(xlabel="unpruned weight", ylabel="density", title="unpruned weights")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
