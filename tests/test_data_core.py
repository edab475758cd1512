"""The in-memory data path: splits, per-batch augmentation, and batch streams under skipping and sharding."""

from __future__ import annotations

import dataclasses

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


# ------------------------------------------------------------------------------------ label noise (paper 002)
def _noisy(fraction, mode="other", split_seed=0, **kwargs):
    cfg = SyntheticConfig(
        name="synthetic", shape=[6], num_classes=4, dtype="float32", train_size=400, test_size=50, val_size=0.1,
        split_seed=split_seed, label_noise=fraction, label_noise_mode=mode, **kwargs,
    )  # fmt: skip
    return build_data(cfg, batch_size=32)


def test_label_noise_flips_exactly_the_asked_fraction_of_training_labels_to_another_class():
    clean, noisy = _noisy(0.0), _noisy(0.25)
    (x, y), (noisy_x, noisy_y) = clean.tensors("train"), noisy.tensors("train")
    assert torch.equal(x, noisy_x) and y.numel() == 360
    flipped = noisy_y != y
    assert int(flipped.sum()) == round(0.25 * 360) == 90  # exact count, every redrawn label is wrong (mode other)
    assert int(noisy_y.min()) >= 0 and int(noisy_y.max()) < 4
    for split in ("val", "test"):  # held out before the noise: clean
        assert all(torch.equal(a, b) for a, b in zip(clean.tensors(split), noisy.tensors(split)))
    assert noisy.label_noise.realised == 0.25 and "90 of 360 training labels wrong (25.00%" in noisy.describe()
    # the other classes are drawn uniformly: 90 flips over 3 shifts of the true class, none of them 0
    shifts = torch.bincount((noisy_y[flipped] - y[flipped]) % 4, minlength=4).tolist()
    assert shifts[0] == 0 and all(15 <= s <= 45 for s in shifts[1:]), shifts
    assert _noisy(1.0).label_noise.changed == 360


def test_label_noise_is_seeded_by_the_split_seed():
    first, again = _noisy(0.2).tensors("train")[1], _noisy(0.2).tensors("train")[1]
    assert torch.equal(first, again)
    other = _noisy(0.2, split_seed=1)  # another split too: compare the flipped sets by example
    clean = _noisy(0.0, split_seed=1)
    flips_0 = set(_noisy(0.0).tensors("train")[0][first != _noisy(0.0).tensors("train")[1]][:, 0].tolist())
    flips_1 = set(clean.tensors("train")[0][other.tensors("train")[1] != clean.tensors("train")[1]][:, 0].tolist())
    assert len(flips_0) == len(flips_1) == 72 and flips_0 != flips_1


def test_label_noise_mode_any_redraws_the_count_among_all_classes():
    clean, noisy = _noisy(0.0).tensors("train")[1], _noisy(0.5, mode="any")
    assert noisy.label_noise.redrawn == 180
    changed = int((noisy.tensors("train")[1] != clean).sum())
    assert changed == noisy.label_noise.changed and 110 <= changed < 180  # about 3/4 of 180 = 135 change


def test_label_noise_after_a_train_subset_and_with_kept_classes(data_root):
    cfg = Mnist1dConfig(name="mnist1d", num_samples=1000, val_size=50, train_subset=101, classes=[1, 2, 3])
    noisy = build_data(dataclasses.replace(cfg, label_noise=0.1), data_root=data_root)
    clean = build_data(cfg, data_root=data_root)
    flipped = noisy.tensors("train")[1] != clean.tensors("train")[1]
    assert noisy.size("train") == 101 and int(flipped.sum()) == round(10.1) == 10
    assert int(noisy.tensors("train")[1].max()) == 2  # within the kept classes, relabelled 0..2


def test_label_noise_is_refused_for_streamed_datasets(tmp_path):
    from lth_runner.config.schema import ImageFolderConfig
    from lth_runner.errors import ConfigError
    from tests.test_data_loaders import fake_imagefolder

    fake_imagefolder(tmp_path)
    cfg = ImageFolderConfig(name="imagefolder", root=str(tmp_path), image_size=8, num_workers=0, label_noise=0.1)
    with pytest.raises(ConfigError, match=r"^dataset.label_noise=0.1 is not accepted: expected 0.0 with dataset=ima"):
        build_data(cfg)
