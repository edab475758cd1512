"""The in-memory data path: splits, per-batch augmentation, and batch streams under skipping and sharding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lth_runner.config.schema import Mnist1dConfig, SyntheticConfig
from lth_runner.data import build_data
from lth_runner.data.base import ArrayDataset, split_arrays
from lth_runner.data.splits import holdout_count, stratified_split
from lth_runner.data.transforms import AugmentParams, BatchTransform


def test_stratified_split_is_seeded_disjoint_and_proportional():
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    kept, held = stratified_split(labels, 20, seed=7)
    assert torch.bincount(labels[held]).tolist() == [12, 6, 2]
    assert set(kept.tolist()).isdisjoint(held.tolist()) and len(kept) + len(held) == 100
    again_kept, again_held = stratified_split(labels, 20, seed=7)
    assert torch.equal(held, again_held) and torch.equal(kept, again_kept)
    assert not torch.equal(held, stratified_split(labels, 20, seed=8)[1])
    # largest remainder keeps the total exact when quotas are fractional
    assert stratified_split(torch.tensor([0, 0, 0, 1, 1, 1, 2]), 3, seed=0)[1].numel() == 3


def test_holdout_count_accepts_fractions_and_counts():
    assert holdout_count(0.1, 1000) == 100 and holdout_count(250, 1000) == 250 and holdout_count(0, 5) == 0
    with pytest.raises(ValueError):
        holdout_count(1000, 1000)


def test_validation_is_held_out_of_training_never_of_test():
    x = torch.arange(100).view(100, 1).float()  # every example is its own index: overlaps are visible
    arrays = ArrayDataset(x, torch.arange(100) % 4, x[:10] + 1000, torch.arange(10) % 4, num_classes=4)
    splits = split_arrays(arrays, val_size=0.2, split_seed=0, train_subset=50)
    train, val, test = (set(splits[s][0].flatten().tolist()) for s in ("train", "val", "test"))
    assert len(val) == 20 and len(train) == 50 and len(test) == 10
    assert train.isdisjoint(val) and val <= set(range(100)) and min(test) >= 1000


def test_crop_and_flip_match_a_naive_implementation():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 5, 7), generator=generator, dtype=torch.uint8)
    transform = BatchTransform(None, None, crop_padding=2, flip=True)
    params = transform.sample(6, generator, torch.device("cpu"))
    params.flip[:2] = torch.tensor([True, False])  # make sure both branches are exercised
    out = transform(images, params)
    padded = F.pad(images, (2, 2, 2, 2))
    for i in range(6):
        top, left = int(params.offset_y[i]), int(params.offset_x[i])
        expected = padded[i, :, top : top + 5, left : left + 7]
        if params.flip[i]:
            expected = expected.flip(-1)
        assert torch.allclose(out[i], expected.float() / 255), i


def test_normalisation_is_per_channel_and_float_data_passes_through():
    transform = BatchTransform([0.5, 0.25], [0.5, 0.25])
    x = torch.tensor([[[[255]], [[0]]]], dtype=torch.uint8)
    assert transform(x).flatten().tolist() == pytest.approx([1.0, -1.0])
    features = torch.randn(4, 40)
    assert torch.equal(BatchTransform(None, None)(features), features)
    assert BatchTransform(None, None, flip=True).sample(3, None, torch.device("cpu")) is not None
    assert BatchTransform(None, None).sample(3, None, torch.device("cpu")) is None
    assert isinstance(BatchTransform(None, None, flip=True).sample(2, None, torch.device("cpu")), AugmentParams)


@pytest.fixture(scope="module")
def images():
    cfg = SyntheticConfig(
        name="synthetic", shape=[3, 8, 8], train_size=100, test_size=30, augment=True, crop_padding=2, val_size=0.1
    )
    return build_data(cfg, batch_size=16, eval_batch_size=7)


def test_batches_are_seeded_and_skip_reproduces_the_tail_of_an_epoch(images):
    full = list(images.train_batches(5))
    assert len(full) == images.num_train_batches() == 6 and sum(len(y) for _, y in full) == 90
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full, images.train_batches(5)))
    assert not torch.equal(full[0][1], next(images.train_batches(6))[1])
    tail = list(images.train_batches(5, skip=4))
    assert len(tail) == 2 and all(torch.equal(a[0], b[0]) for a, b in zip(full[4:], tail))


def test_ranks_receive_disjoint_slices_of_the_same_global_batch(images):
    single = list(images.train_batches(9))
    ranks = [list(images.train_batches(9, rank=r, world_size=2)) for r in range(2)]
    for whole, first, second in zip(single, *ranks):
        assert torch.equal(torch.cat([first[0], second[0]]), whole[0])  # same images, same augmentation
        assert torch.equal(torch.cat([first[1], second[1]]), whole[1])
    evaluated = [torch.cat([y for _, y in images.eval_batches("test", rank=r, world_size=2)]) for r in range(2)]
    assert torch.equal(torch.cat(evaluated), torch.cat([y for _, y in images.eval_batches("test")]))
    assert images.size("val") == 10 and images.size("test") == 30


def test_mnist1d_is_generated_once_and_cached(tmp_path):
    data_root = tmp_path
    cfg = Mnist1dConfig(name="mnist1d", num_samples=1000, val_size=100)
    first = build_data(cfg, data_root=data_root)
    assert len(list((data_root / "mnist1d").glob("mnist1d_*.pt"))) == 1
    second = build_data(cfg, data_root=data_root)
    assert first.spec.input_shape == (40,) and first.spec.num_classes == 10
    assert first.size("train") == 700 and first.size("val") == 100 and first.size("test") == 200
    assert torch.equal(first.tensors("train")[0], second.tensors("train")[0])
