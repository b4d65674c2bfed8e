"""User arrays (numpy or torch), scikit-learn digits, and data set names."""

import numpy as np
import pytest
import torch

from casam.data import DATASETS, from_arrays, load_dataset, load_digits


def test_grey_images_get_a_channel_axis():
    images = np.arange(5 * 6 * 7, dtype=np.uint8).reshape(5, 6, 7)
    data = from_arrays(images, np.array([0, 1, 2, 1, 0]), classes=["a", "b", "c"], name="mine")
    assert data.images.shape == (5, 1, 6, 7) and data.images.dtype == torch.uint8
    assert torch.equal(data.images[:, 0], torch.from_numpy(images))
    assert data.classes == ["a", "b", "c"] and data.name == "mine" and data.true_labels is None


def test_channels_last_and_channels_first_give_the_same_data():
    rng = np.random.default_rng(0)
    nchw = rng.integers(0, 256, size=(6, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 4, 6)
    first = from_arrays(nchw, labels)
    last = from_arrays(torch.from_numpy(nchw).permute(0, 2, 3, 1), torch.from_numpy(labels))
    assert first.images.shape == last.images.shape == (6, 3, 32, 32)
    assert torch.equal(first.images, last.images) and first.mean == last.mean


def test_float_images_in_unit_range_are_quantised_and_integer_pixels_accepted():
    values = np.array([0.0, 0.5, 1.0, 0.2], dtype=np.float64).reshape(4, 1, 1)
    data = from_arrays(values, np.array([0, 1, 0, 1]))
    assert data.images.flatten().tolist() == [0, 128, 255, 51]
    ints = from_arrays(np.array([[[0, 255]], [[7, 9]]], dtype=np.int64), np.array([0, 1]))
    assert ints.images.dtype == torch.uint8 and ints.images.flatten().tolist() == [0, 255, 7, 9]


def test_feature_vectors_become_float_channels():
    features = np.random.default_rng(1).normal(size=(10, 5)) * 100
    data = from_arrays(features, np.arange(10) % 2, true_labels=np.zeros(10, dtype=np.int64))
    assert data.images.shape == (10, 5, 1, 1) and data.images.dtype == torch.float32
    assert np.allclose(data.mean, features.mean(axis=0), atol=1e-3)
    assert data.is_noisy.sum().item() == 5


@pytest.mark.parametrize(
    "images, labels, error, message",
    [
        (np.full((2, 4, 4), 1.5), np.array([0, 1]), ValueError, r"float images must lie in \[0, 1\]; got values from 1.5 to 1.5"),
        (np.full((2, 4, 4), 300), np.array([0, 1]), ValueError, "integer images must lie in 0..255; got values from 300 to 300"),
        (np.zeros((2, 4, 4), bool), np.array([0, 1]), TypeError, "images must hold real numbers"),
        (np.zeros(4), np.array([0, 1]), ValueError, r"images must be \(N, H, W\), \(N, C, H, W\), \(N, H, W, C\) or \(N, D\); got shape \(4,\)"),
        (np.zeros((3, 4, 4), np.uint8), np.array([0, 1]), ValueError, r"labels must be a 1-D array with one entry per image \(3\)"),
        (np.array([[np.nan, 1.0]]), np.array([0]), ValueError, "feature vectors must be finite"),
        ([[1, 2]], np.array([0]), TypeError, "images must be a numpy.ndarray or torch.Tensor; got list"),
    ],
)
def test_bad_arrays_are_refused(images, labels, error, message):
    with pytest.raises(error, match=message):
        from_arrays(images, labels)


def test_labels_outside_the_classes_are_refused():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\) for 2 classes; got values from 0 to 5"):
        from_arrays(np.zeros((3, 2, 2), np.uint8), np.array([0, 1, 5]), classes=["cat", "dog"])


def test_digits_are_1x8x8_uint8_with_a_stratified_seeded_split():
    train, test = load_digits()
    assert (len(train), len(test)) == (1438, 359) and train.images.shape[1:] == (1, 8, 8)
    assert train.images.dtype == torch.uint8 and int(train.images.max()) == 255 and train.name == "digits"
    test_counts = torch.bincount(test.labels, minlength=10).double()
    total_counts = test_counts + torch.bincount(train.labels, minlength=10)
    assert ((test_counts / total_counts - 0.2).abs() < 0.01).all()
    assert test.mean == train.mean  # the train split's normalisation
    assert torch.equal(load_digits(seed=0)[1].images, test.images)
    assert not torch.equal(load_digits(seed=1)[1].images, test.images)
    assert len(load_digits(test_fraction=0.5)[1]) == pytest.approx(1797 / 2, abs=5)


@pytest.mark.parametrize("fraction", [0, 1, -0.2, 1.5, "0.2"])
def test_digits_refuse_a_bad_test_fraction(fraction):
    with pytest.raises(ValueError, match="test_fraction must be a number strictly between 0 and 1"):
        load_digits(test_fraction=fraction)


def test_unknown_data_set_name_lists_the_allowed_ones():
    assert DATASETS == ("fashion-mnist", "cifar10", "cifar100", "digits")
    for bad in ("mnist", "", None):
        with pytest.raises(ValueError, match="unknown data set .*; choose one of: fashion-mnist, cifar10, cifar100, digits"):
            load_dataset(bad)
    assert len(load_dataset("digits")[0]) == 1438
