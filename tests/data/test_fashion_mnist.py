"""Fashion-MNIST from the real IDX files: sizes, format checks, search order, download, errors."""

import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from casam.data import DataFormatError, DataNotFoundError, load_dataset, load_fashion_mnist
from casam.data import sources
from casam.data.dataset import channel_stats

SYSTEM = Path("/usr/share/datasets/fashion-mnist")
FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


@pytest.fixture(scope="module")
def fashion():
    return load_fashion_mnist(download=False)


@pytest.fixture
def no_system_data(tmp_path, monkeypatch):
    """Hide the system copy and the user's cache, so only what a test provides can be found."""
    monkeypatch.setattr(sources, "SYSTEM_FASHION_MNIST_DIR", tmp_path / "no-system-copy")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


def test_real_files_have_60000_train_and_10000_test_images_of_10_classes(fashion):
    train, test = fashion
    assert (len(train), len(test)) == (60_000, 10_000)
    for split in (train, test):
        assert split.images.shape[1:] == (1, 28, 28) and split.images.dtype == torch.uint8
        assert split.labels.dtype == torch.int64 and split.true_labels is None and split.noise is None
        assert split.num_classes == 10 and split.name == "fashion-mnist"
    assert train.classes[0] == "T-shirt/top" and train.classes[9] == "Ankle boot"
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10


def test_stated_normalisation_matches_the_train_split(fashion):
    train, test = fashion
    assert train.mean == (0.2860,) and train.std == (0.3530,) and test.mean == train.mean
    mean, std = channel_stats(train.images)
    assert mean[0] == pytest.approx(0.2860, abs=1e-4) and std[0] == pytest.approx(0.3530, abs=1e-4)


def test_load_dataset_by_name_gives_the_same_data(fashion):
    train, _ = load_dataset("Fashion-MNIST", download=False)
    assert torch.equal(train.labels, fashion[0].labels)


def _copy(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copy(SYSTEM / name, folder / name)
    return folder


def _write_idx(path: Path, array: np.ndarray, *, claimed_shape=None) -> None:
    shape = claimed_shape or array.shape
    header = bytes((0, 0, 0x08, len(shape))) + struct.pack(f">{len(shape)}I", *shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_data_dir_comes_before_the_system_folder(no_system_data):
    folder = _copy(no_system_data / "mine" / "fashion-mnist")
    _write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.full(10_000, 3))  # recognisably different labels
    _, test = load_fashion_mnist(no_system_data / "mine", download=False)  # data_dir/fashion-mnist is searched
    assert (test.labels == 3).all()


def test_truncated_gz_file_is_an_error_naming_it(no_system_data):
    folder = _copy(no_system_data / "data")
    blob = (SYSTEM / FILES[0]).read_bytes()
    (folder / FILES[0]).write_bytes(blob[: len(blob) // 3])
    with pytest.raises(DataFormatError, match=r"train-images-idx3-ubyte\.gz is not a readable \.gz file \(truncated"):
        load_fashion_mnist(folder, download=False)


def test_idx_payload_shorter_than_its_header_is_an_error_naming_it(no_system_data):
    folder = _copy(no_system_data / "data")
    _write_idx(folder / FILES[1], np.zeros(100), claimed_shape=(60_000,))
    with pytest.raises(DataFormatError, match=r"train-labels-idx1-ubyte\.gz is truncated or corrupt: .* 60,000 bytes .* holds 100"):
        load_fashion_mnist(folder, download=False)


def test_wrong_magic_number_is_an_error_naming_the_file(no_system_data):
    folder = _copy(no_system_data / "data")
    (folder / FILES[3]).write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 100))  # images magic in a labels file
    with pytest.raises(DataFormatError, match=r"t10k-labels-idx1-ubyte\.gz is not an IDX file .* 00000803, expected 00000801"):
        load_fashion_mnist(folder, download=False)


def test_wrong_number_of_images_is_an_error(no_system_data):
    folder = _copy(no_system_data / "data")
    _write_idx(folder / FILES[2], np.zeros((5, 28, 28)))
    with pytest.raises(DataFormatError, match=r"t10k-images-idx3-ubyte\.gz holds images of shape \(5, 28, 28\)"):
        load_fashion_mnist(folder, download=False)


def test_missing_files_error_names_the_folders_and_how_to_get_them(no_system_data):
    mine = no_system_data / "mine"
    mine.mkdir()
    (mine / FILES[0]).write_bytes(b"")  # one of four files is not enough
    with pytest.raises(DataNotFoundError) as caught:
        load_fashion_mnist(mine, download=False)
    message = str(caught.value)
    assert isinstance(caught.value, FileNotFoundError)
    for expected in (str(mine), str(no_system_data / "no-system-copy"), str(no_system_data / "cache" / "casam" / "fashion-mnist"),
                     "apt-get install dataset-fashion-mnist", sources.FASHION_MNIST_URL, "--data-dir", *FILES):
        assert expected in message
    assert "\n" not in message


def test_failed_download_is_reported_in_the_error(no_system_data, monkeypatch):
    monkeypatch.setattr(sources, "FASHION_MNIST_URL", (no_system_data / "empty-mirror").as_uri() + "/")
    with pytest.raises(DataNotFoundError, match=r"downloading file://.*train-images-idx3-ubyte\.gz failed"):
        load_fashion_mnist(download=True)
    assert not list((no_system_data / "cache").rglob("*.gz"))  # nothing half-written


def test_download_fetches_the_four_files_into_data_dir(no_system_data, monkeypatch):
    monkeypatch.setattr(sources, "FASHION_MNIST_URL", SYSTEM.as_uri() + "/")  # a mirror reachable offline
    target = no_system_data / "downloads"
    train, test = load_fashion_mnist(target, download=True)
    assert (len(train), len(test)) == (60_000, 10_000)
    assert sorted(p.name for p in (target / "fashion-mnist").iterdir()) == sorted(FILES)
