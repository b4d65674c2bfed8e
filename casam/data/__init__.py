"""Data layer: in-memory data sets with given and true labels, tensor batch loading, real data sources.

See casam.data.dataset (NoisyDataset), casam.data.loader (BatchLoader), casam.data.sources (the
loaders and their search order) and casam.data.cifar_n (CIFAR-10N / CIFAR-100N human labels).
"""

from casam.data.cifar_n import PUBLISHED_NOISE_RATES, load_cifar_n
from casam.data.dataset import NoisyDataset
from casam.data.errors import DataFormatError, DataNotFoundError
from casam.data.loader import AUGMENTATIONS, BatchLoader
from casam.data.safe_pickle import UnsafePickleError
from casam.data.sources import (
    DATASETS,
    from_arrays,
    load_cifar10,
    load_cifar100,
    load_dataset,
    load_digits,
    load_fashion_mnist,
)

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "PUBLISHED_NOISE_RATES",
    "BatchLoader",
    "DataFormatError",
    "DataNotFoundError",
    "NoisyDataset",
    "UnsafePickleError",
    "from_arrays",
    "load_cifar10",
    "load_cifar100",
    "load_cifar_n",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
]
