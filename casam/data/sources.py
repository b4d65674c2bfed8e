"""Where data sets come from: files on disk (Fashion-MNIST IDX, CIFAR pickles), a download when the
network allows, scikit-learn's bundled digits, and arrays a user passes in.

Every loader returns `NoisyDataset`s with clean labels (noise is applied afterwards with
`NoisyDataset.with_noise`), whole splits as one uint8 tensor, and the normalisation constants of the
training split (the test split reuses them). Search order for files: `data_dir`, then the system
folder (Fashion-MNIST only), then the cache `$XDG_CACHE_HOME/casam` (default `~/.cache/casam`),
then a download into `data_dir` (or the cache) when `download=True`; otherwise one DataNotFoundError
that names the folders looked in and says how to get the files. Files that exist but are truncated
or corrupt raise DataFormatError (a ValueError) naming the file.
"""

from __future__ import annotations

import gzip
import numbers
import os
import shutil
import struct
import tarfile
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from casam.data.dataset import NoisyDataset, channel_stats
from casam.data.errors import DataFormatError, DataNotFoundError
from casam.data.safe_pickle import restricted_loads

__all__ = [
    "DATASETS",
    "FASHION_MNIST_CLASSES",
    "load_dataset",
    "load_fashion_mnist",
    "load_cifar10",
    "load_cifar100",
    "load_digits",
    "from_arrays",
    "cache_root",
]

DATASETS = ("fashion-mnist", "cifar10", "cifar100", "digits")
DOWNLOAD_TIMEOUT_S = 10.0  # per connection attempt / read; a machine without network fails fast

SYSTEM_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60_000),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10_000),
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
FASHION_MNIST_STATS = ((0.2860,), (0.3530,))  # train split, pixels / 255


def cache_root() -> Path:
    """`$XDG_CACHE_HOME/casam`, default `~/.cache/casam`: where downloads go when no data_dir is given."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "casam"


def _download(url: str, destination: Path) -> str | None:
    """Fetch url into destination atomically (temp file, then rename); None on success, else the reason."""
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            with tempfile.NamedTemporaryFile(dir=destination.parent, prefix=destination.name, suffix=".part", delete=False) as tmp:
                try:
                    shutil.copyfileobj(response, tmp)
                except BaseException:
                    tmp.close()
                    os.unlink(tmp.name)
                    raise
        os.replace(tmp.name, destination)
        return None
    except (OSError, ValueError) as error:  # URLError, HTTPError, timeouts and disk errors are OSErrors
        return f"{type(error).__name__}: {getattr(error, 'reason', error)}"


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative int; got {seed!r}")
    return int(seed)


def _check_dir(data_dir) -> Path | None:
    if data_dir is None:
        return None
    if not isinstance(data_dir, (str, os.PathLike)):
        raise TypeError(f"data_dir must be a folder path (str or os.PathLike) or None; got {data_dir!r}")
    return Path(data_dir).expanduser()


# ---------------------------------------------------------------------------- Fashion-MNIST
def _read_idx(path: Path, *, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes (gzip-compressed) as an array; magic 0x0000080{ndim}, big-endian dims."""
    try:
        with gzip.open(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError, zlib.error) as error:  # BadGzipFile is an OSError
        raise DataFormatError(f"{path} is not a readable .gz file (truncated or corrupt: {error}); delete it and get it again") from None
    header = 4 + 4 * ndim
    if len(raw) < header or raw[:4] != bytes((0, 0, 0x08, ndim)):
        raise DataFormatError(
            f"{path} is not an IDX file of {ndim}-D unsigned bytes: its magic number is {raw[:4].hex() or 'missing'}, "
            f"expected 0000080{ndim}"
        )
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DataFormatError(
            f"{path} is truncated or corrupt: its header promises {expected:,} bytes for shape {shape}, "
            f"but it holds {len(raw) - header:,}; delete it and get it again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def _fashion_mnist_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    images_name, labels_name, count = FASHION_MNIST_FILES[split]
    images = _read_idx(folder / images_name, ndim=3)
    labels = _read_idx(folder / labels_name, ndim=1)
    if images.shape != (count, 28, 28):
        raise DataFormatError(f"{folder / images_name} holds images of shape {images.shape}; Fashion-MNIST {split} has ({count}, 28, 28)")
    if labels.shape != (count,) or labels.max() >= 10:
        raise DataFormatError(f"{folder / labels_name} holds {labels.shape[0]:,} labels up to {labels.max()}; Fashion-MNIST {split} has {count:,} labels in 0..9")
    return images, labels


def load_fashion_mnist(data_dir=None, *, download=True) -> tuple[NoisyDataset, NoisyDataset]:
    """(train, test): 60,000 / 10,000 images 1x28x28 uint8, 10 classes, mean/std (0.2860,)/(0.3530,).

    Looks for the four IDX .gz files in data_dir (or data_dir/fashion-mnist), then
    /usr/share/datasets/fashion-mnist (Debian/Ubuntu package dataset-fashion-mnist), then the cache;
    then downloads them from FASHION_MNIST_URL into data_dir/fashion-mnist (or the cache) if allowed.
    """
    data_dir = _check_dir(data_dir)
    names = [name for split in ("train", "test") for name in FASHION_MNIST_FILES[split][:2]]
    folders = ([data_dir, data_dir / "fashion-mnist"] if data_dir else []) + [SYSTEM_FASHION_MNIST_DIR, cache_root() / "fashion-mnist"]
    found = next((f for f in folders if all((f / n).is_file() for n in names)), None)
    failure = None
    if found is None and download:
        target = (data_dir or cache_root()) / "fashion-mnist"
        for name in names:
            if not (target / name).is_file():
                failure = _download(FASHION_MNIST_URL + name, target / name)
                if failure:
                    failure = f"downloading {FASHION_MNIST_URL + name} failed ({failure})"
                    break
        found = None if failure else target
    if found is None:
        where = ", ".join(str(f) for f in dict.fromkeys(folders))
        tried = f"; {failure}" if failure else ("" if download else " (downloading is off)")
        raise DataNotFoundError(
            f"Fashion-MNIST files ({', '.join(names)}) were not found in {where}{tried}. "
            f"Get them with `sudo apt-get install dataset-fashion-mnist` (installs {SYSTEM_FASHION_MNIST_DIR}), "
            f"or download the four files from {FASHION_MNIST_URL} into a folder and pass it as --data-dir"
        )
    mean, std = FASHION_MNIST_STATS
    splits = []
    for split in ("train", "test"):
        images, labels = _fashion_mnist_split(found, split)
        splits.append(
            NoisyDataset(
                torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)),
                classes=list(FASHION_MNIST_CLASSES), name="fashion-mnist", mean=mean, std=std,
            )
        )
    return splits[0], splits[1]


# ---------------------------------------------------------------------------- CIFAR-10 / CIFAR-100
@dataclass(frozen=True)
class _CifarLayout:
    name: str
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    names_key: str
    num_classes: int
    url: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


_CIFAR10 = _CifarLayout(
    "cifar10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta",
    "labels", "label_names", 10, "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
)
# CIFAR-100 mean/std: the train split's per-channel statistics (pixels / 255), as commonly quoted.
_CIFAR100 = _CifarLayout(
    "cifar100", "cifar-100-python", ("train",), "test", "meta",
    "fine_labels", "fine_label_names", 100, "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
)


def _entry(batch: dict, key: str, path: Path):
    for candidate in (key.encode(), key):  # Python 2 pickles (the originals) have bytes keys
        if candidate in batch:
            return batch[candidate]
    raise DataFormatError(f"{path} has no {key!r} entry; it is not a CIFAR batch file of this data set")


def _read_cifar_pickle(path: Path) -> dict:
    try:
        blob = path.read_bytes()
    except OSError as error:
        raise DataNotFoundError(f"cannot read {path} ({error})") from None
    batch = restricted_loads(blob, source=str(path), encoding="bytes")
    if not isinstance(batch, dict):
        raise DataFormatError(f"{path} should hold a dict; got {type(batch).__name__}")
    return batch


def _read_cifar_batch(path: Path, layout: _CifarLayout) -> tuple[np.ndarray, np.ndarray]:
    batch = _read_cifar_pickle(path)
    data = np.asarray(_entry(batch, "data", path))
    labels = np.asarray(_entry(batch, layout.label_key, path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataFormatError(f"{path}: data must be (N, 3072) uint8; got shape {data.shape}, dtype {data.dtype}")
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise DataFormatError(f"{path}: {layout.label_key} must be {data.shape[0]} integers, one per image; got shape {labels.shape}")
    if data.shape[0] and (labels.min() < 0 or labels.max() >= layout.num_classes):
        raise DataFormatError(f"{path}: {layout.label_key} must lie in [0, {layout.num_classes}); got {labels.min()} to {labels.max()}")
    return data, labels.astype(np.int64)


def _extract_cifar(archive: Path, root: Path, layout: _CifarLayout) -> str | None:
    """Unpack the regular files of layout.folder/ from the official tar.gz into root/layout.folder.

    Members are streamed into a temp folder, then each is renamed into place, so an interrupted
    extraction leaves no partial file; files already present are kept; nothing outside is written.
    """
    prefix = layout.folder + "/"
    destination = root / layout.folder
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=layout.folder + "."))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = member.name[len(prefix) :] if member.name.startswith(prefix) else ""
                if member.isfile() and name and "/" not in name and name not in ("..", "."):
                    with tar.extractfile(member) as source, open(tmp / name, "wb") as out:
                        shutil.copyfileobj(source, out)
        destination.mkdir(parents=True, exist_ok=True)
        for path in tmp.iterdir():
            if not (destination / path.name).exists():
                os.replace(path, destination / path.name)
        return None
    except (OSError, tarfile.TarError, EOFError, zlib.error) as error:
        return f"unpacking {archive} failed ({error})"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_cifar(layout: _CifarLayout, data_dir, download: bool) -> tuple[NoisyDataset, NoisyDataset]:
    data_dir = _check_dir(data_dir)
    needed = (*layout.train_files, layout.test_file, layout.meta_file)
    folders = [cache_root() / layout.folder]
    if data_dir is not None:
        folders[:0] = [data_dir, data_dir / layout.folder] if data_dir.name == layout.folder else [data_dir / layout.folder]
    found = next((f for f in folders if all((f / n).is_file() for n in needed)), None)
    failure = None
    if found is None and download:
        root = data_dir or cache_root()
        archive = root / layout.url.rsplit("/", 1)[1]
        failure = _download(layout.url, archive) if not archive.is_file() else None
        failure = f"downloading {layout.url} failed ({failure})" if failure else _extract_cifar(archive, root, layout)
        if failure is None:
            archive.unlink(missing_ok=True)
            found = root / layout.folder if all((root / layout.folder / n).is_file() for n in needed) else None
            failure = None if found else f"{archive} did not contain {layout.folder}/ with {', '.join(needed)}"
    if found is None:
        where = ", ".join(str(f) for f in folders)
        tried = f"; {failure}" if failure else ("" if download else " (downloading is off)")
        raise DataNotFoundError(
            f"{layout.name.upper()} files ({layout.folder}/ with {', '.join(needed)}) were not found in {where}{tried}. "
            f"Download {layout.url}, unpack it (tar xzf) in a folder and pass that folder as --data-dir"
        )
    meta = _read_cifar_pickle(found / layout.meta_file)
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in _entry(meta, layout.names_key, found / layout.meta_file)]
    if len(classes) != layout.num_classes:
        raise DataFormatError(f"{found / layout.meta_file} lists {len(classes)} class names; {layout.name} has {layout.num_classes}")
    splits = []
    for files in (layout.train_files, (layout.test_file,)):
        parts = [_read_cifar_batch(found / name, layout) for name in files]
        data = np.concatenate([p[0] for p in parts]).reshape(-1, 3, 32, 32)  # rows: 1024 R, 1024 G, 1024 B
        labels = np.concatenate([p[1] for p in parts])
        splits.append(
            NoisyDataset(torch.from_numpy(data), torch.from_numpy(labels), classes=classes, name=layout.name, mean=layout.mean, std=layout.std)
        )
    return splits[0], splits[1]


def load_cifar10(data_dir=None, *, download=True) -> tuple[NoisyDataset, NoisyDataset]:
    """(train, test) from cifar-10-batches-py (data_batch_1..5, test_batch, batches.meta): 3x32x32 uint8, 10 classes.

    Looks in data_dir/cifar-10-batches-py (or data_dir itself if it is that folder), then the cache;
    then downloads and unpacks the official tar.gz (163 MB) into data_dir (or the cache) if allowed.
    Pickles are read with a restricted unpickler (numpy arrays and plain types only).
    """
    return _load_cifar(_CIFAR10, data_dir, download)


def load_cifar100(data_dir=None, *, download=True) -> tuple[NoisyDataset, NoisyDataset]:
    """(train, test) from cifar-100-python (train, test, meta): 3x32x32 uint8, 100 fine classes; as load_cifar10."""
    return _load_cifar(_CIFAR100, data_dir, download)


# ---------------------------------------------------------------------------- digits and user arrays
def _stratified_mask(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """(N,) bool marking round(fraction * n_k) uniformly chosen samples of every class k."""
    counts = np.bincount(labels)
    quota = np.rint(fraction * counts).astype(np.int64)
    shuffled = rng.permutation(labels.size)
    grouped = shuffled[np.argsort(labels[shuffled], kind="stable")]
    rank = np.arange(labels.size) - np.repeat(np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
    mask = np.zeros(labels.size, dtype=bool)
    mask[grouped[rank < np.repeat(quota, counts)]] = True
    return mask


def load_digits(*, test_fraction=0.2, seed=0) -> tuple[NoisyDataset, NoisyDataset]:
    """(train, test) from scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), for fast tests.

    Pixels 0..16 are scaled to uint8 0..255 (round(v * 255 / 16)), shape 1x8x8. The split is
    stratified: round(test_fraction * n_k) test images per class, chosen with default_rng(seed).
    mean/std are measured on the train split and reused for the test split. Needs scikit-learn.
    """
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, numbers.Real) or not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be a number strictly between 0 and 1; got {test_fraction!r}")
    seed = _check_seed(seed)
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError:
        raise ModuleNotFoundError("the digits data set needs scikit-learn: pip install 'casam[sklearn]'") from None
    bunch = sklearn_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    test = _stratified_mask(labels, float(test_fraction), np.random.default_rng(seed))
    classes = [str(k) for k in range(10)]
    mean, std = channel_stats(torch.from_numpy(images[~test]))

    def split(mask: np.ndarray) -> NoisyDataset:
        return NoisyDataset(torch.from_numpy(images[mask]), torch.from_numpy(labels[mask]), classes=classes, name="digits", mean=mean, std=std)

    return split(~test), split(test)


def from_arrays(images, labels, *, true_labels=None, classes=None, name="custom", mean=None, std=None) -> NoisyDataset:
    """A NoisyDataset from numpy arrays or torch tensors.

    images:
      (N, H, W)             grey images -> (N, 1, H, W);
      (N, C, H, W)/(N, H, W, C) colour images; channels-last is assumed when the last axis has 1, 3 or
                            4 entries and axis 1 does not (so (N, 3, 32, 32) and (N, 32, 32, 3) both work);
      pixel values: uint8, integers in 0..255, or floats in [0, 1] (quantised to uint8: round(x * 255));
      (N, D)                feature vectors, any finite reals -> float32 (N, D, 1, 1), so each feature
                            is a channel and the normalisation standardises it; use an MLP on them.
    labels / true_labels: (N,) integer class indices (true_labels, if known, for metrics only).
    mean/std: per channel; None -> measured on these images (pass the train split's for a test split).
    """
    tensor = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.asarray(images)) if isinstance(images, np.ndarray) else None
    if tensor is None:
        raise TypeError(f"images must be a numpy.ndarray or torch.Tensor; got {type(images).__name__}")
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise TypeError(f"images must hold real numbers (uint8 pixels, floats in [0, 1] or features); got dtype {tensor.dtype}")
    tensor = tensor.detach().cpu()
    if tensor.dim() == 2:
        features = tensor.to(torch.float32)
        if not torch.isfinite(features).all():
            raise ValueError("feature vectors must be finite; they contain NaN or infinity")
        return NoisyDataset(features[:, :, None, None].contiguous(), labels, true_labels=true_labels, classes=classes, name=name, mean=mean, std=std)
    if tensor.dim() == 3:
        tensor = tensor.unsqueeze(1)
    elif tensor.dim() == 4:
        if tensor.shape[-1] in (1, 3, 4) and tensor.shape[1] not in (1, 3, 4):
            tensor = tensor.permute(0, 3, 1, 2)
    else:
        raise ValueError(f"images must be (N, H, W), (N, C, H, W), (N, H, W, C) or (N, D); got shape {tuple(tensor.shape)}")
    if tensor.numel() == 0:
        raise ValueError(f"images must not be empty; got shape {tuple(tensor.shape)}")
    if tensor.is_floating_point():
        if not torch.isfinite(tensor).all() or tensor.min() < 0 or tensor.max() > 1:
            raise ValueError(
                f"float images must lie in [0, 1]; got values from {float(tensor.min())} to {float(tensor.max())} "
                f"(divide 0..255 pixels by 255, or pass an (N, D) array for feature vectors)"
            )
        tensor = torch.round(tensor.to(torch.float32) * 255).to(torch.uint8)
    elif tensor.dtype != torch.uint8:
        low, high = int(tensor.min()), int(tensor.max())
        if low < 0 or high > 255:
            raise ValueError(f"integer images must lie in 0..255; got values from {low} to {high}")
        tensor = tensor.to(torch.uint8)
    return NoisyDataset(tensor.contiguous(), labels, true_labels=true_labels, classes=classes, name=name, mean=mean, std=std)


def load_dataset(name, *, data_dir=None, download=True) -> tuple[NoisyDataset, NoisyDataset]:
    """(train, test) of a named data set: one of DATASETS (digits ignores data_dir and download)."""
    if not isinstance(name, str) or name.strip().lower() not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of: {', '.join(DATASETS)}")
    name = name.strip().lower()
    if name == "fashion-mnist":
        return load_fashion_mnist(data_dir, download=download)
    if name == "cifar10":
        return load_cifar10(data_dir, download=download)
    if name == "cifar100":
        return load_cifar100(data_dir, download=download)
    return load_digits()
