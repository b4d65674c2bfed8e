"""BatchLoader: whole-tensor batches, seeded per (seed, epoch), sharded per rank, crop+flip augmentation."""

import itertools

import numpy as np
import pytest
import torch

from casam.data import BatchLoader, NoisyDataset, from_arrays, load_digits
from casam.data.loader import crop_flip


@pytest.fixture(scope="module")
def digits():
    return load_digits()[0]  # 1,438 real 1x8x8 images


@pytest.fixture(scope="module")
def colour():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(50, 3, 32, 32), dtype=np.uint8)
    return from_arrays(images, rng.integers(0, 10, 50), name="cifar10")


def _epoch(loader):
    return [tuple(t.clone() for t in batch) for batch in loader]


def test_batches_have_the_right_shapes_dtypes_and_device(digits):
    loader = BatchLoader(digits, batch_size=100, device="cpu")
    batches = _epoch(loader)
    assert len(batches) == len(loader) == 15  # ceil(1438 / 100)
    for x, y, idx in batches:
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and idx.dtype == torch.int64
        assert x.shape[1:] == (1, 8, 8) and x.shape[0] == y.shape[0] == idx.shape[0]
        assert x.device.type == y.device.type == idx.device.type == "cpu"
    assert [b[0].shape[0] for b in batches] == [100] * 14 + [38]


def test_batches_are_the_normalised_images_and_given_labels_of_their_indices(digits):
    x, y, idx = next(iter(BatchLoader(digits, batch_size=64, seed=3)))
    expected = (digits.images[idx].float() / 255 - digits.mean[0]) / digits.std[0]
    assert torch.allclose(x, expected, atol=1e-6)
    assert torch.equal(y, digits.labels[idx])
    assert torch.allclose(x[5], digits[int(idx[5])][0], atol=1e-6)


def test_every_index_exactly_once_per_epoch(digits):
    loader = BatchLoader(digits, batch_size=128, seed=1)
    for epoch in (0, 1, 7):
        loader.set_epoch(epoch)
        seen = torch.cat([idx for _, _, idx in loader])
        assert torch.equal(seen.sort().values, torch.arange(len(digits)))


def test_same_seed_and_epoch_give_identical_batches_even_after_other_epochs(colour):
    fresh = BatchLoader(colour, batch_size=16, augment="crop_flip", seed=5)
    fresh.set_epoch(3)
    replayed = BatchLoader(colour, batch_size=16, augment="crop_flip", seed=5)
    for epoch in range(4):  # a run that went through epochs 0..3 vs one resumed at epoch 3
        replayed.set_epoch(epoch)
        last = _epoch(replayed)
    for a, b in zip(_epoch(fresh), last, strict=True):
        assert all(torch.equal(s, t) for s, t in zip(a, b))


def test_different_epochs_and_seeds_differ(digits):
    loader = BatchLoader(digits, batch_size=2000, seed=0)
    orders = []
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        orders.append(next(iter(loader))[2])
    other = next(iter(BatchLoader(digits, batch_size=2000, seed=1)))[2]
    assert not torch.equal(orders[0], orders[1]) and not torch.equal(orders[0], other)


def test_no_shuffle_keeps_the_data_order(digits):
    idx = torch.cat([i for _, _, i in BatchLoader(digits, batch_size=500, shuffle=False)])
    assert torch.equal(idx, torch.arange(len(digits)))


@pytest.mark.parametrize("world_size", [2, 3, 7])
def test_rank_shards_are_disjoint_equal_and_cover_the_epoch(digits, world_size):
    n = len(digits)  # 1438: not a multiple of 3 or 7, so padding by wrapping is exercised
    shards = []
    for rank in range(world_size):
        loader = BatchLoader(digits, batch_size=32, seed=4, rank=rank, world_size=world_size)
        loader.set_epoch(2)
        shards.append(torch.cat([idx for _, _, idx in loader]))
        assert len(loader) == -(-shards[-1].numel() // 32)
    per_rank = -(-n // world_size)
    assert all(s.numel() == per_rank for s in shards)
    assert len({len(BatchLoader(digits, batch_size=32, rank=r, world_size=world_size)) for r in range(world_size)}) == 1
    everything = torch.cat(shards)
    assert torch.equal(everything.unique(), torch.arange(n))  # every sample is seen
    assert everything.numel() - n == per_rank * world_size - n < world_size  # only the wrap-around repeats
    single = BatchLoader(digits, batch_size=32, seed=4)
    single.set_epoch(2)
    order = single.epoch_indices()
    padded = torch.cat([order, order[: per_rank * world_size - n]])
    for rank, shard in enumerate(shards):  # rank r takes positions r, r + world_size, ... of the same permutation
        assert torch.equal(shard, padded[rank::world_size])


def test_drop_last_drops_the_partial_batch(digits):
    loader = BatchLoader(digits, batch_size=100, drop_last=True)
    assert len(loader) == 14 and all(x.shape[0] == 100 for x, _, _ in loader)


def test_crop_flip_function_crops_with_zero_padding_and_mirrors():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32) + 1
    centre = torch.tensor([[4, 4], [4, 4]])
    assert torch.equal(crop_flip(x, centre, torch.tensor([False, False])), x)
    assert torch.equal(crop_flip(x, centre, torch.tensor([True, False])), torch.stack([x[0].flip(-1), x[1]]))
    corner = crop_flip(x, torch.tensor([[0, 0], [8, 8]]), torch.tensor([False, False]))
    assert torch.equal(corner[0, :, 4:, 4:], x[0, :, :28, :28]) and (corner[0, :, :4] == 0).all() and (corner[0, :, :, :4] == 0).all()
    assert torch.equal(corner[1, :, :28, :28], x[1, :, 4:, 4:]) and (corner[1, :, 28:] == 0).all()


def _candidates(image: torch.Tensor) -> list[torch.Tensor]:
    padded = torch.nn.functional.pad(image, (4, 4, 4, 4))
    crops = [padded[:, i : i + 32, j : j + 32] for i, j in itertools.product(range(9), repeat=2)]
    return crops + [c.flip(-1) for c in crops]


def test_loader_augmentation_keeps_shape_and_applies_random_crops_and_flips(colour):
    plain = BatchLoader(colour, batch_size=50, shuffle=False)
    augmented = BatchLoader(colour, batch_size=50, shuffle=False, augment="crop_flip", seed=2)
    (x, _, idx), (xa, ya, idxa) = next(iter(plain)), next(iter(augmented))
    assert xa.shape == x.shape == (50, 3, 32, 32) and torch.equal(idx, idxa)
    flipped = shifted = 0
    for k in range(10):
        matches = [c for c in _candidates(x[k]) if torch.equal(c, xa[k])]
        assert matches, f"sample {k} is not a padded crop (or its mirror) of its image"
    for k in range(50):
        flipped += any(torch.equal(xa[k], c) for c in _candidates(x[k])[81:]) and not torch.equal(xa[k], x[k])
        shifted += not (torch.equal(xa[k], x[k]) or torch.equal(xa[k], x[k].flip(-1)))
    assert 10 <= flipped <= 40 and shifted >= 40  # p(flip) = 0.5; a crop is centred with p = 1/81


def test_augmentation_of_a_sample_does_not_depend_on_batch_size_or_rank(colour):
    by_index = {}
    for batch_size, rank, world_size in ((50, 0, 1), (7, 0, 2), (7, 1, 2)):
        loader = BatchLoader(colour, batch_size=batch_size, augment="crop_flip", seed=9, rank=rank, world_size=world_size)
        for x, _, idx in loader:
            for image, i in zip(x, idx.tolist()):
                if i in by_index:
                    assert torch.equal(by_index[i], image)
                by_index[i] = image
    assert len(by_index) == 50


def test_feature_vectors_are_standardised_per_feature():
    rng = np.random.default_rng(0)
    features = rng.normal(loc=[0.0, 10.0, -5.0], scale=[1.0, 3.0, 0.5], size=(400, 3))
    data = from_arrays(features, rng.integers(0, 2, 400))
    x = torch.cat([b[0] for b in BatchLoader(data, batch_size=400, shuffle=False)])
    assert x.shape == (400, 3, 1, 1)
    assert torch.allclose(x.mean(dim=0).flatten(), torch.zeros(3), atol=1e-5)
    assert torch.allclose(x.std(dim=0, unbiased=False).flatten(), torch.ones(3), atol=1e-4)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(batch_size=0), ValueError, "batch_size must be an int >= 1; got 0"),
        (dict(batch_size=2.5), ValueError, "batch_size must be an int >= 1; got 2.5"),
        (dict(batch_size=8, augment="flip"), ValueError, "augment must be one of none, crop_flip; got 'flip'"),
        (dict(batch_size=8, seed=-1), ValueError, "seed must be an int >= 0; got -1"),
        (dict(batch_size=8, rank=2, world_size=2), ValueError, r"rank must lie in \[0, world_size=2\); got 2"),
        (dict(batch_size=8, world_size=0), ValueError, "world_size must be an int >= 1; got 0"),
        (dict(batch_size=8, shuffle="yes"), TypeError, "shuffle must be True or False; got 'yes'"),
        (dict(batch_size=2000, drop_last=True), ValueError, "batch_size 2000 with drop_last=True leaves no batch"),
    ],
)
def test_bad_loader_arguments_are_refused(digits, kwargs, error, message):
    with pytest.raises(error, match=message):
        BatchLoader(digits, **kwargs)


def test_loader_refuses_non_datasets_and_bad_epochs(digits):
    with pytest.raises(TypeError, match="dataset must be a casam.data.NoisyDataset; got Tensor"):
        BatchLoader(torch.zeros(3), batch_size=1)
    with pytest.raises(ValueError, match="epoch must be an int >= 0; got -1"):
        BatchLoader(digits, batch_size=8).set_epoch(-1)
    assert isinstance(digits, NoisyDataset)
