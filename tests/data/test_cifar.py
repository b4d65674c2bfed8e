"""CIFAR-10/100 loaders on small files in the real python-pickle format, written by the tests."""

import dataclasses
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from casam.data import DataFormatError, DataNotFoundError, UnsafePickleError, load_cifar10, load_cifar100, load_dataset
from casam.data import sources

CIFAR10_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def _images(rng, n):
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def _dump(path: Path, obj) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))  # the originals are Python 2 protocol-2 pickles, bytes keys


def write_cifar10(root: Path, *, per_batch=4, test=5, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {"train_data": [], "train_labels": []}
    for i in range(1, 6):
        data, labels = _images(rng, per_batch), rng.integers(0, 10, per_batch).tolist()
        _dump(folder / f"data_batch_{i}", {b"batch_label": b"training batch", b"labels": labels, b"data": data, b"filenames": [b"x.png"] * per_batch})
        written["train_data"].append(data)
        written["train_labels"] += labels
    data, labels = _images(rng, test), rng.integers(0, 10, test).tolist()
    _dump(folder / "test_batch", {b"batch_label": b"testing batch", b"labels": labels, b"data": data})
    _dump(folder / "batches.meta", {b"label_names": CIFAR10_NAMES, b"num_cases_per_batch": per_batch, b"num_vis": 3072})
    written.update(test_data=data, test_labels=labels, folder=folder)
    return written


def write_cifar100(root: Path, *, train=7, test=3, seed=1) -> dict:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    written = {"folder": folder}
    for split, n in (("train", train), ("test", test)):
        data, fine = _images(rng, n), rng.integers(0, 100, n).tolist()
        _dump(folder / split, {b"filenames": [b"x.png"] * n, b"fine_labels": fine, b"coarse_labels": [f // 5 for f in fine], b"data": data})
        written[split] = (data, fine)
    _dump(folder / "meta", {b"fine_label_names": [f"class{k}".encode() for k in range(100)], b"coarse_label_names": [b"c"] * 20})
    return written


def test_cifar10_loader_reads_all_batches_in_order(tmp_path):
    written = write_cifar10(tmp_path)
    train, test = load_cifar10(tmp_path, download=False)
    assert (len(train), len(test)) == (20, 5)
    assert train.images.shape == (20, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.labels.tolist() == written["train_labels"] and test.labels.tolist() == written["test_labels"]
    assert train.classes[1] == "automobile" and train.num_classes == 10 and train.name == "cifar10"
    assert train.mean == (0.4914, 0.4822, 0.4465) and train.std == (0.2470, 0.2435, 0.2616)
    # row layout: 1024 red, then 1024 green, then 1024 blue values, each row-major 32x32
    row = written["train_data"][1][2]  # sample 4 + 2 = 6
    assert train.images[6, 0, 0, 0] == row[0] and train.images[6, 1, 0, 0] == row[1024]
    assert train.images[6, 2, 31, 31] == row[3071] and train.images[6, 0, 1, 5] == row[32 + 5]
    assert torch.equal(test.images.reshape(5, -1), torch.from_numpy(written["test_data"]))


def test_cifar100_loader_uses_fine_labels_and_names(tmp_path):
    written = write_cifar100(tmp_path)
    train, test = load_dataset("cifar100", data_dir=tmp_path, download=False)
    assert (len(train), len(test)) == (7, 3) and train.num_classes == 100 and train.classes[42] == "class42"
    assert train.labels.tolist() == written["train"][1] and test.labels.tolist() == written["test"][1]
    assert torch.equal(train.images.reshape(7, -1), torch.from_numpy(written["train"][0]))


def test_data_dir_may_be_the_batches_folder_itself(tmp_path):
    written = write_cifar10(tmp_path)
    train, _ = load_cifar10(written["folder"], download=False)
    assert len(train) == 20


def test_missing_cifar_files_error_says_how_to_get_them(tmp_path):
    written = write_cifar10(tmp_path)
    (written["folder"] / "data_batch_3").unlink()
    with pytest.raises(DataNotFoundError) as caught:
        load_cifar10(tmp_path, download=False)
    message = str(caught.value)
    for expected in ("data_batch_3", str(written["folder"]), str(tmp_path / "cache" / "casam" / "cifar-10-batches-py"),
                     "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "--data-dir"):
        assert expected in message


def test_truncated_batch_is_an_error_naming_the_file(tmp_path):
    written = write_cifar10(tmp_path)
    path = written["folder"] / "data_batch_2"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataFormatError, match=r"data_batch_2 is not a readable pickle \(truncated or corrupt"):
        load_cifar10(tmp_path, download=False)


def test_batch_with_wrong_image_size_is_an_error(tmp_path):
    write_cifar100(tmp_path)
    _dump(tmp_path / "cifar-100-python" / "test", {b"fine_labels": [1, 2], b"data": np.zeros((2, 1024), np.uint8)})
    with pytest.raises(DataFormatError, match=r"test: data must be \(N, 3072\) uint8; got shape \(2, 1024\)"):
        load_cifar100(tmp_path, download=False)


def test_labels_out_of_range_are_an_error(tmp_path):
    written = write_cifar10(tmp_path)
    _dump(written["folder"] / "test_batch", {b"labels": [0, 10], b"data": np.zeros((2, 3072), np.uint8)})
    with pytest.raises(DataFormatError, match=r"labels must lie in \[0, 10\); got 0 to 10"):
        load_cifar10(tmp_path, download=False)


class _RunsCommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_malicious_batch_is_refused_without_running_it(tmp_path):
    written = write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    _dump(written["folder"] / "batches.meta", {b"label_names": _RunsCommand(f"touch {marker}")})
    with pytest.raises(UnsafePickleError, match=r"batches\.meta references .*system"):
        load_cifar10(tmp_path, download=False)
    assert not marker.exists()


def test_download_unpacks_the_official_archive_layout(tmp_path, monkeypatch):
    source = tmp_path / "source"
    written = write_cifar10(source)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    archive = mirror / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(written["folder"], arcname="cifar-10-batches-py")
        tar.add(written["folder"] / "test_batch", arcname="../escape")  # must never be written outside
    monkeypatch.setattr(sources, "_CIFAR10", dataclasses.replace(sources._CIFAR10, url=archive.as_uri()))
    target = tmp_path / "data"
    train, test = load_cifar10(target, download=True)
    assert (len(train), len(test)) == (20, 5) and train.labels.tolist() == written["train_labels"]
    assert sorted(p.name for p in target.iterdir()) == ["cifar-10-batches-py"]  # archive removed, no temp left
    assert not (tmp_path / "escape").exists()


def test_failed_download_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "_CIFAR100", dataclasses.replace(sources._CIFAR100, url=(tmp_path / "nowhere.tar.gz").as_uri()))
    with pytest.raises(DataNotFoundError, match=r"downloading file://.*nowhere\.tar\.gz failed"):
        load_cifar100(tmp_path / "data", download=True)
