"""Exact-count selection of the highest-scoring surviving weights, globally or per layer.

Only surviving weights are ranked (pruned ones can never come back), exactly the requested number is kept, and
ties at the threshold are broken deterministically in favour of the earlier entry (layer order, then flat index).
No full sort: the threshold is found by an exact k-th-largest search over a narrow band located from a strided
sample, so a 25M-weight model is pruned in a fraction of a second on a CPU.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from lth_runner.sparse.mask import Mask
from lth_runner.sparse.schedule import kept_count

_DIRECT_LIMIT = 1 << 20  # below this many entries one kthvalue over everything is already fast
_SAMPLE_SIZE = 1 << 17


def kth_largest(tensors: Sequence[torch.Tensor], k: int) -> torch.Tensor:
    """The ``k``-th largest value (1-based) over all entries of ``tensors``, exactly."""
    flats = [t.reshape(-1) for t in tensors]
    total = sum(f.numel() for f in flats)
    if not 1 <= k <= total:
        raise ValueError(f"k={k} outside 1..{total}")
    if total <= _DIRECT_LIMIT:
        everything = torch.cat(flats)
        return everything.kthvalue(total - k + 1).values
    low, high = _band(flats, total, k)
    above = sum(int((f > high).sum()) for f in flats)
    band = torch.cat([f[(f >= low) & (f <= high)] for f in flats])
    rank = k - above  # rank of the answer inside the band, counted from the top
    if not 1 <= rank <= band.numel():  # the sample misled us (vanishingly rare): search everything
        everything = torch.cat(flats)
        return everything.kthvalue(total - k + 1).values
    return band.kthvalue(band.numel() - rank + 1).values


def _band(flats: list[torch.Tensor], total: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds that contain the k-th largest value with overwhelming probability, from a strided sample."""
    stride = max(1, total // _SAMPLE_SIZE)
    sample = torch.cat([f[::stride] for f in flats]).float()
    size = sample.numel()
    fraction = k / total
    expected = fraction * size
    margin = 6.0 * math.sqrt(size * fraction * (1.0 - fraction)) + 16 * len(flats) + 8
    inf = torch.tensor(float("inf"), dtype=sample.dtype, device=sample.device)
    top_rank, bottom_rank = math.floor(expected - margin), math.ceil(expected + margin)
    high = sample.kthvalue(size - top_rank + 1).values if top_rank >= 1 else inf
    low = sample.kthvalue(size - bottom_rank + 1).values if bottom_rank <= size else -inf
    # Pruned entries score -inf; leaving them out of the band keeps it small (a -inf answer falls back).
    low = low.clamp(min=torch.finfo(sample.dtype).min)
    return low.to(flats[0].dtype), high.to(flats[0].dtype)


def kth_largest_near(x: torch.Tensor, k: int, previous: torch.Tensor, previous_kth: torch.Tensor) -> torch.Tensor:
    """The ``k``-th largest entry of ``x``, exactly, when an earlier ``previous`` version of ``x`` had
    ``previous_kth`` as its ``k``-th largest: no entry moved by more than ``d = max |x - previous|``, so neither did
    any order statistic, and the answer lies in ``[previous_kth - d, previous_kth + d]``. One pass finds the change,
    one more the entries in that band, and a ``kthvalue`` over the band (usually a small fraction) the answer; a full
    search is the fallback. Mask search re-selects after every optimizer step, when scores barely move."""
    flat, before = x.reshape(-1), previous.reshape(-1)
    total = flat.numel()
    if not 1 <= k <= total:
        raise ValueError(f"k={k} outside 1..{total}")
    change = (flat - before).abs().max()
    slack = change * (1 + 1e-5) + previous_kth.abs() * 1e-6 + torch.finfo(flat.dtype).tiny
    low, high = previous_kth - slack, previous_kth + slack
    above = int((flat > high).sum())
    band = flat[(flat >= low) & (flat <= high)]
    rank = k - above
    if not 1 <= rank <= band.numel():
        return flat.kthvalue(total - k + 1).values
    return band.kthvalue(band.numel() - rank + 1).values


def select_top(
    scores: Mapping[str, torch.Tensor], keep: int, alive: Mask | None = None, *, threshold: torch.Tensor | None = None
) -> Mask:
    """Keep exactly ``keep`` of the surviving entries with the highest scores, across all tensors together.
    ``threshold``, when the caller knows it, is the ``keep``-th largest surviving score (not searched again)."""
    names = list(scores)
    ranked: dict[str, torch.Tensor] = {}
    survivors = 0
    for name in names:
        score = scores[name].detach()
        if score.dtype not in (torch.float32, torch.float64):
            score = score.float()
        if alive is not None:
            score = score.masked_fill(~alive[name], -math.inf)  # pruned entries can never be chosen again
            survivors += int(alive[name].sum())
        else:
            survivors += score.numel()
        ranked[name] = score
    if not 0 <= keep <= survivors:
        raise ValueError(f"cannot keep {keep} weights: only {survivors} survive")
    if keep == 0:
        return Mask({n: torch.zeros_like(ranked[n], dtype=torch.bool) for n in names})
    for name in names:
        if torch.isnan(ranked[name]).any():
            raise ValueError(f"pruning scores of {name} contain NaN (did training diverge?)")
    if threshold is None:
        threshold = kth_largest([ranked[n] for n in names], keep)
    masks = {n: ranked[n] >= threshold for n in names}
    surplus = sum(int(m.sum()) for m in masks.values()) - keep
    for name in reversed(names):  # ties at the threshold: the latest entries give way, the earliest are kept
        if surplus <= 0:
            break
        tied = torch.nonzero((ranked[name] == threshold).reshape(-1)).flatten()[-surplus:]
        masks[name].view(-1)[tied] = False
        surplus -= tied.numel()
    return Mask(masks)


def prune_to_density(
    scores: Mapping[str, torch.Tensor],
    density: float,
    *,
    scope: str = "global",
    alive: Mask | None = None,
) -> Mask:
    """Keep ``density`` of all entries (of each tensor, with ``scope="layerwise"``), choosing among survivors.

    The count is relative to the full tensors, not to the survivors: pruning an 80%-dense mask to density 0.64
    keeps 64% of the weights.
    """
    if scope == "global":
        total = sum(s.numel() for s in scores.values())
        return select_top(scores, kept_count(total, density), alive)
    if scope == "layerwise":
        masks = {}
        for name, score in scores.items():
            layer_alive = Mask({name: alive[name]}) if alive is not None else None
            keep = kept_count(score.numel(), density)
            if layer_alive is not None:
                keep = min(keep, layer_alive.num_kept())
            masks[name] = select_top({name: score}, keep, layer_alive)[name]
        return Mask(masks)
    raise ValueError(f"unknown scope {scope!r}: expected 'global' or 'layerwise'")
