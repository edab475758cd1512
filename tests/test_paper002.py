"""Analysis tools of paper 002 (Sakamoto & Sato, "Analyzing Lottery Ticket Hypothesis from PAC-Bayesian Theory
Perspective", Table 2): the ``large_final`` / ``small_final`` criteria of Zhou et al. 2019 and IMP's per-round
training-accuracy drops after pruning, after rewinding and after retraining."""

from __future__ import annotations

import torch

from lth_runner.config.compose import compose_config
from lth_runner.config.validate import build_run_config
from lth_runner.session import run_experiment
from lth_runner.sparse import CRITERIA, Mask, kept_count, prune_to_density

BASE = [
    "model=mlp",
    "dataset=mnist1d",
    "dataset.num_samples=1000",
    "model.hidden=[32,32]",
    "trainer.batch_size=50",
    "trainer.epochs=3",
    "optim.lr=0.05",
    "sparsity=80",
    "sparsity.rounds=2",
    "trainer.keep_round_weights=true",
    "logger.console=none",
    "logger.plots=false",
]
LAYERS = {"fc1.weight": (32, 40), "fc2.weight": (32, 32), "fc3.weight": (10, 32)}
TOTAL = sum(a * b for a, b in LAYERS.values())


def run(tmp_path, data_root, *overrides):
    cfg = build_run_config(compose_config([*BASE, f"paths.data_root={data_root}", *overrides]))
    return run_experiment(cfg, tmp_path), tmp_path


def weights(path):
    state = torch.load(path, weights_only=True)
    return {name: state[name] for name in LAYERS}


# ------------------------------------------------------------------------------------------------ criteria
HAND = {"a": torch.tensor([3.0, -1.0, 0.5, -2.0]), "b": torch.tensor([[1.0, -1.0], [0.25, 4.0]])}


def test_large_final_is_magnitude_and_keeps_the_largest_weights():
    scores = CRITERIA.get("large_final")(HAND)
    assert all(torch.equal(scores[n], CRITERIA.get("magnitude")(HAND)[n]) for n in HAND)
    mask = prune_to_density(scores, 3 / 8)  # |w|: a 3 1 .5 2, b 1 1 .25 4 -> keep 4, 3, 2
    assert mask.num_kept() == 3
    assert mask["a"].tolist() == [True, False, False, True] and mask["b"].tolist() == [[False, False], [False, True]]


def test_small_final_keeps_the_smallest_weights_ties_to_the_earliest_entry():
    scores = CRITERIA.get("small_final")(HAND)
    assert scores["a"].tolist() == [-3.0, -1.0, -0.5, -2.0]
    # keep 3: 0.25 and 0.5, then one of the three weights of magnitude 1 (a[1], b[0,0], b[0,1]): the earliest, a[1]
    mask = prune_to_density(scores, 3 / 8)
    assert mask["a"].tolist() == [False, True, True, False] and mask["b"].tolist() == [[False, False], [True, False]]
    # among survivors only: with 0.25 (b[1,0]) already pruned, the two earliest of the 1s join 0.5
    alive = Mask({"a": torch.ones(4, dtype=torch.bool), "b": torch.tensor([[True, True], [False, True]])})
    mask = prune_to_density(scores, 3 / 8, alive=alive)
    assert mask["a"].tolist() == [False, True, True, False] and mask["b"].tolist() == [[True, False], [False, False]]
    # per layer: 2 of 4 each
    mask = prune_to_density(scores, 0.5, scope="layerwise")
    assert mask["a"].tolist() == [False, True, True, False] and mask["b"].tolist() == [[True, False], [True, False]]


def test_lth_iter_with_small_final_keeps_exactly_the_smallest_surviving_trained_weights(tmp_path, data_root):
    summary, out = run(tmp_path, data_root, "method=lth_iter", "method.criterion=small_final")
    rounds = [Mask.load(out / f"masks/round_{k:02d}.pt") for k in (1, 2)]
    ranked = [weights(out / "checkpoints/round00_dense.final.pt"), weights(out / "checkpoints/round01_ticket.final.pt")]
    alive = Mask({n: torch.ones(shape, dtype=torch.bool) for n, shape in LAYERS.items()})
    for new, w in zip(rounds, ranked):
        assert not any((new[n] & ~alive[n]).any() for n in LAYERS), "a removed weight came back"
        kept = torch.cat([w[n].abs()[new[n]] for n in LAYERS])
        removed = torch.cat([w[n].abs()[alive[n] & ~new[n]] for n in LAYERS])
        assert kept.max() <= removed.min(), f"kept |w| {kept.max():.4g} > removed |w| {removed.min():.4g}"
        alive = new
    assert [m.num_kept() for m in rounds] == [kept_count(TOTAL, 0.2**0.5), kept_count(TOTAL, 0.2)]
    assert summary.final.kept == rounds[-1].num_kept()
