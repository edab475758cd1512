"""Seeded, stratified splits: the validation set is held out from the training set, never from the test set."""

from __future__ import annotations

import torch


def holdout_count(size: float, total: int) -> int:
    """``size`` < 1 is a fraction of ``total``; ``size`` >= 1 is an absolute count (must leave something behind)."""
    count = int(round(size * total)) if size < 1 else int(size)
    if not 0 <= count < total:
        raise ValueError(f"cannot hold out {count} of {total} examples")
    return count


def stratified_split(labels: torch.Tensor, holdout: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices ``0..len(labels)-1`` into (kept, held-out) with ``holdout`` examples held out.

    Each class contributes in proportion to its frequency (largest-remainder rounding so the total is exact);
    within a class the choice is a seeded permutation. Both index sets are returned sorted, so the kept examples
    keep their original order.
    """
    labels = labels.cpu().long()
    total = labels.numel()
    if holdout == 0:
        return torch.arange(total), torch.empty(0, dtype=torch.long)
    generator = torch.Generator().manual_seed(int(seed))
    classes, counts = torch.unique(labels, return_counts=True)
    quota = counts.double() * holdout / total
    take = quota.floor().long()
    remainder = holdout - int(take.sum())
    if remainder:
        order = torch.argsort(quota - take.double(), descending=True, stable=True)
        take[order[:remainder]] += 1
    held = []
    for cls, n_take in zip(classes.tolist(), take.tolist()):
        members = torch.nonzero(labels == cls).flatten()
        held.append(members[torch.randperm(members.numel(), generator=generator)[:n_take]])
    held_idx = torch.sort(torch.cat(held)).values
    keep = torch.ones(total, dtype=torch.bool)
    keep[held_idx] = False
    return torch.nonzero(keep).flatten(), held_idx
