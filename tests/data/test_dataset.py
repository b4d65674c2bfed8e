"""NoisyDataset: items with indices, stratified seeded subsets, noise with the truth kept beside it."""

import numpy as np
import pytest
import torch

from casam.data import NoisyDataset, load_digits
from casam.noise import parse_noise


@pytest.fixture(scope="module")
def digits():
    return load_digits()[0]


def test_item_is_normalised_image_given_label_and_index(digits):
    image, label, index = digits[7]
    assert image.shape == (1, 8, 8) and image.dtype == torch.float32
    assert torch.allclose(image, (digits.images[7].float() / 255 - digits.mean[0]) / digits.std[0])
    assert (label, index) == (int(digits.labels[7]), 7)
    assert digits[-1][2] == len(digits) - 1 and digits[np.int64(3)][2] == 3 and digits[torch.tensor(4)][2] == 4
    with pytest.raises(IndexError, match="index 1438 is out of range for a data set of 1438 samples"):
        digits[len(digits)]
    with pytest.raises(TypeError, match="index must be an int; got float"):
        digits[1.0]


def test_subset_is_stratified_seeded_and_reindexed(digits):
    counts = torch.bincount(digits.labels, minlength=10).numpy()
    part = digits.subset(500, seed=3)
    assert len(part) == 500 and part.mean == digits.mean and part.classes == digits.classes
    sub_counts = torch.bincount(part.labels, minlength=10).numpy()
    assert np.abs(sub_counts - 500 * counts / counts.sum()).max() < 1  # proportional to within one sample
    assert part[499][2] == 499
    again, other = digits.subset(500, seed=3), digits.subset(500, seed=4)
    assert torch.equal(part.images, again.images) and not torch.equal(part.images, other.images)
    # the chosen samples are original samples, kept in their original relative order
    flat = digits.images.reshape(len(digits), -1)
    positions = [int((flat == row).all(dim=1).nonzero()[0]) for row in part.images.reshape(500, -1)[:20]]
    assert positions == sorted(positions)
    assert torch.equal(digits.subset(len(digits), seed=0).images, digits.images)


@pytest.mark.parametrize("n", [0, -5, 1439, 2.0, True])
def test_subset_size_out_of_range_is_refused(digits, n):
    with pytest.raises(ValueError, match=r"subset size must be an int in \[1, 1438\]"):
        digits.subset(n, seed=0)


def test_with_noise_keeps_the_old_labels_as_truth(digits):
    noisy = digits.with_noise("symmetric:0.4", seed=0)
    assert torch.equal(noisy.true_labels, digits.labels) and noisy.images is digits.images
    assert noisy.noise.rate == pytest.approx(round(0.4 * len(digits)) / len(digits))
    assert torch.equal(noisy.labels, torch.from_numpy(noisy.noise.labels))
    assert torch.equal(noisy.is_noisy, torch.from_numpy(noisy.noise.is_noisy))
    assert noisy.is_noisy.float().mean().item() == pytest.approx(noisy.noise.rate)
    assert digits.true_labels is None and digits.is_noisy is None  # the input is untouched
    same = digits.with_noise(parse_noise("symmetric:0.4"), seed=0)
    assert torch.equal(same.labels, noisy.labels)
    assert not torch.equal(digits.with_noise("symmetric:0.4", seed=1).labels, noisy.labels)


def test_with_noise_none_and_instance_and_asymmetric_mapping_by_name(digits):
    clean = digits.with_noise("none", seed=0)
    assert clean.noise.rate == 0.0 and torch.equal(clean.labels, clean.true_labels)
    instance = digits.with_noise("instance:0.3", seed=0)
    assert 0.2 < instance.noise.rate < 0.4
    with pytest.raises(ValueError, match="mapping must be one of cifar10, cifar100, fashion-mnist"):
        digits.with_noise("asymmetric:0.3", seed=0)  # digits has no look-alike mapping
    renamed = NoisyDataset(digits.images, digits.labels, classes=digits.classes, name="fashion-mnist")
    flipped = renamed.with_noise("asymmetric:0.5", seed=0)
    look_alike = {0: 6, 6: 0, 2: 4, 4: 2, 5: 7, 7: 5}  # the data set's name picks the Fashion-MNIST mapping
    pairs = zip(flipped.true_labels[flipped.is_noisy].tolist(), flipped.labels[flipped.is_noisy].tolist())
    assert flipped.noise.rate > 0.2 and all(look_alike.get(true) == given for true, given in pairs)


def test_subset_of_noisy_data_keeps_the_noise_restricted_to_it(digits):
    noisy = digits.with_noise("pairflip:0.3", seed=0)
    part = noisy.subset(300, seed=1)
    assert part.noise.rate == pytest.approx(part.is_noisy.float().mean().item())
    assert np.allclose(part.noise.transition.sum(axis=1), 1.0)
    assert np.array_equal(part.noise.labels, part.labels.numpy())


def test_to_moves_every_tensor(digits):
    noisy = digits.with_noise("symmetric:0.2", seed=0)
    moved = noisy.to("cpu")
    assert moved.images.device.type == moved.labels.device.type == moved.true_labels.device.type == "cpu"
    assert moved.noise is noisy.noise and len(moved) == len(noisy)


def test_constructor_validates_its_inputs():
    images = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"labels must be a 1-D array with one entry per image \(4\); got shape \(3,\)"):
        NoisyDataset(images, torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\) for 2 classes; got values from 0 to 2"):
        NoisyDataset(images, torch.tensor([0, 1, 2, 0]), classes=["a", "b"])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\) for 3 classes; got values from -1 to 2"):
        NoisyDataset(images, torch.tensor([0, 1, 2, -1]))
    with pytest.raises(TypeError, match="labels must hold integer class indices; got dtype torch.float32"):
        NoisyDataset(images, torch.tensor([0.0, 1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match=r"true_labels must be a 1-D array with one entry per image \(4\)"):
        NoisyDataset(images, torch.tensor([0, 1, 0, 1]), true_labels=torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="images must be uint8 .* or float32 .*; got dtype torch.int64"):
        NoisyDataset(images.long(), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match=r"images must be a non-empty \(N, C, H, W\) array; got shape \(4, 2, 2\)"):
        NoisyDataset(images[:, 0], torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="mean must hold 1 finite numbers"):
        NoisyDataset(images, torch.tensor([0, 1, 0, 1]), mean=(0.5, 0.5), std=(1.0, 1.0))


def test_unspecified_stats_are_measured_and_constant_channels_get_std_one():
    images = torch.zeros(4, 2, 2, 2, dtype=torch.uint8)
    images[:2, 0] = 255
    data = NoisyDataset(images, torch.tensor([0, 1, 0, 1]))
    assert data.mean == pytest.approx((0.5, 0.0)) and data.std == pytest.approx((0.5, 1.0))
    assert data.classes == ["0", "1"] and data.num_classes == 2


def test_holdout_splits_the_noisy_data_stratified_and_disjoint(digits):
    noisy = digits.with_noise("symmetric:0.4", seed=0)
    kept, held = noisy.holdout(0.2, seed=5)
    assert len(held) == round(0.2 * len(noisy)) and len(kept) + len(held) == len(noisy)
    # per given class, the held-out share is the fraction to within one sample
    counts = torch.bincount(noisy.labels, minlength=10).double()
    assert (torch.bincount(held.labels, minlength=10) - 0.2 * counts).abs().max() <= 1
    # disjoint and together the whole set: every image lands in exactly one part, truth and noise travel with it
    flat = lambda d: {bytes(row.numpy()) + bytes([int(y), int(t)]) for row, y, t in zip(d.images.reshape(len(d), -1), d.labels, d.true_labels)}
    assert flat(kept) | flat(held) == flat(noisy) and not flat(kept) & flat(held)
    assert held.noise.rate == pytest.approx(held.is_noisy.double().mean().item()) and held[len(held) - 1][2] == len(held) - 1
    again = noisy.holdout(0.2, seed=5)[1]
    assert torch.equal(again.images, held.images) and not torch.equal(noisy.holdout(0.2, seed=6)[1].images, held.images)
    for bad in (0, 1, 1.5, True):
        with pytest.raises(ValueError, match="fraction must be in"):
            noisy.holdout(bad, seed=0)
