"""Masks and exact-count selection: counts, ties, survivors only, distances, persistence, criteria."""

from __future__ import annotations

import pytest
import torch

from lth_runner.sparse import CRITERIA, Mask, ScoreContext, kth_largest, prune_to_density, select_top
from lth_runner.sparse import select as select_module


def test_global_selection_keeps_exact_count_of_largest():
    scores = {"a": torch.tensor([[0.5, 3.0], [1.0, 0.1]]), "b": torch.tensor([2.0, 0.2, 4.0])}
    mask = select_top(scores, 3)
    assert mask["a"].tolist() == [[False, True], [False, False]]
    assert mask["b"].tolist() == [True, False, True]
    assert mask["a"].dtype == torch.bool and mask.num_kept() == 3


def test_ties_are_broken_by_position_deterministically():
    scores = {"a": torch.ones(4), "b": torch.ones(4)}
    mask = select_top(scores, 5)
    assert mask["a"].tolist() == [True] * 4 and mask["b"].tolist() == [True, False, False, False]
    assert select_top(scores, 5) == mask


def test_only_survivors_are_ranked_and_pruned_zeros_never_return():
    weights = {"w": torch.tensor([0.0, 0.0, 5.0, 1.0, 2.0, 3.0])}
    alive = Mask({"w": torch.tensor([False, False, True, True, True, True])})
    scores = CRITERIA.get("magnitude")(weights)
    # keep 4 of 6: only four survive, so all survivors stay and the pruned zeros stay pruned
    assert prune_to_density(scores, 4 / 6, alive=alive)["w"].tolist() == [False, False, True, True, True, True]
    # a pruned entry with a *large* score still cannot come back
    boosted = {"w": torch.tensor([9.0, 9.0, 5.0, 1.0, 2.0, 3.0])}
    assert select_top(boosted, 2, alive)["w"].tolist() == [False, False, True, False, False, True]
    with pytest.raises(ValueError, match="only 4 survive"):
        select_top(boosted, 5, alive)


def test_layerwise_scope_prunes_each_layer_to_the_density():
    torch.manual_seed(0)
    scores = {"big": torch.rand(100) * 10, "small": torch.rand(10)}
    globally = prune_to_density(scores, 0.5)
    layerwise = prune_to_density(scores, 0.5, scope="layerwise")
    assert globally.num_kept() == 55 and layerwise.num_kept() == 55
    assert layerwise.layer_kept() == {"big": 50, "small": 5}
    assert globally.layer_kept()["small"] < 5  # the small-magnitude layer loses more under a global ranking
    with pytest.raises(ValueError, match="scope"):
        prune_to_density(scores, 0.5, scope="blockwise")


def test_band_search_matches_a_full_sort_on_large_inputs(monkeypatch):
    monkeypatch.setattr(select_module, "_DIRECT_LIMIT", 1000)  # force the sampled-band path on test-sized data
    generator = torch.Generator().manual_seed(0)
    tensors = [torch.randn(50_000, generator=generator), torch.randn(70_001, generator=generator).abs()]
    tensors[1][:30_000] = float("-inf")  # pruned entries
    tensors[0][:20_000] = 0.5  # a heavy tie
    everything = torch.sort(torch.cat(tensors), descending=True).values
    for k in (1, 17, 20_000, 45_123, 60_000, 90_001):
        assert kth_largest(tensors, k) == everything[k - 1], k
    mask = select_top({"x": tensors[0], "y": tensors[1]}, 45_123)
    assert mask.num_kept() == 45_123


def test_nan_scores_fail_loudly():
    with pytest.raises(ValueError, match="NaN"):
        select_top({"w": torch.tensor([1.0, float("nan")])}, 1)


def test_mask_statistics_and_distances_hand_computed():
    a = Mask({"x": torch.tensor([1, 1, 0, 0], dtype=torch.bool), "y": torch.tensor([1, 0], dtype=torch.bool)})
    b = Mask({"x": torch.tensor([1, 0, 1, 0], dtype=torch.bool), "y": torch.tensor([1, 0], dtype=torch.bool)})
    assert a.numel() == 6 and a.num_kept() == 3 and a.density() == 0.5
    assert a.layer_densities() == {"x": 0.5, "y": 0.5}
    assert a.hamming(b) == 2 and a.hamming_fraction(b) == pytest.approx(2 / 6)
    assert a.intersection(b) == 2 and a.kept_overlap(b) == pytest.approx(2 / 3)
    assert a.overlap(b) == pytest.approx(1 - 2 / 6)
    assert a.overlap(b, denominator="kept") == pytest.approx(1 - 2 / 3)
    with pytest.raises(ValueError):
        a.hamming(Mask({"x": torch.ones(4, dtype=torch.bool)}))


def test_random_masks_have_exact_per_layer_counts_and_follow_the_generator():
    shapes = {"a": (10, 10), "b": (7,)}
    mask = Mask.random(shapes, {"a": 0.25, "b": 0.5}, generator=torch.Generator().manual_seed(1))
    assert mask.layer_kept() == {"a": 25, "b": 4}  # 3.5 rounds half up
    again = Mask.random(shapes, {"a": 0.25, "b": 0.5}, generator=torch.Generator().manual_seed(1))
    other = Mask.random(shapes, {"a": 0.25, "b": 0.5}, generator=torch.Generator().manual_seed(2))
    assert mask == again and mask != other
    like = Mask.random_like(mask, generator=torch.Generator().manual_seed(3))
    assert like.layer_kept() == mask.layer_kept() and like != mask


def test_mask_save_load_roundtrip_is_bool(tmp_path):
    mask = Mask.random({"w": (4, 5)}, 0.3, generator=torch.Generator().manual_seed(0))
    mask.save(tmp_path / "m.pt")
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    assert payload["masks"]["w"].dtype == torch.bool
    assert Mask.load(tmp_path / "m.pt") == mask
    torch.save({"w": torch.ones(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a mask file"):
        Mask.load(tmp_path / "other.pt")
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temporary files


def test_criteria_registry():
    weights = {"w": torch.tensor([-3.0, 1.0, -0.5])}
    assert CRITERIA.get("magnitude")(weights)["w"].tolist() == [3.0, 1.0, 0.5]
    first = CRITERIA.get("random")(weights, ScoreContext(seed=4))["w"]
    assert torch.equal(first, CRITERIA.get("random")(weights, ScoreContext(seed=4))["w"])
    assert not torch.equal(first, CRITERIA.get("random")(weights, ScoreContext(seed=5))["w"])
    assert {"magnitude", "random"} <= set(CRITERIA.names())


def test_atomic_writes_respect_the_umask(tmp_path):
    import os

    from lth_runner.utils.io import write_json_atomic

    write_json_atomic(tmp_path / "a.json", {"x": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~umask
