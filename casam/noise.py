"""Synthetic label noise: pure, seeded numpy functions that corrupt a vector of true labels.

Why: every experiment on noisy labels starts from known-clean labels plus a documented, reproducible
corruption, so that selection precision/recall and memorisation can be measured against the truth.

Conventions (used everywhere in casam):
- A transition matrix is row-stochastic, ``T[i, j] = P(given label = j | true label = i)``; every
  generator returns the *realised* one (counts of (true, given) pairs, row-normalised; a class absent
  from the true labels gets the identity row).
- Per-sample flags are called ``is_noisy``: True where the given label differs from the true one.
- Randomness comes only from the ``seed`` argument: an int (fed to ``numpy.random.default_rng``) or a
  ``numpy.random.Generator`` (which is advanced). Same seed and inputs, same labels on any machine.
- ``exact=True`` flips exactly ``round(rate * n)`` samples (Python ``round``: nearest integer, ties
  to even), chosen uniformly without replacement among the eligible ones: over all N samples for
  symmetric noise, per true class (``round(rate_c * n_c)``) for asymmetric, pair-flip and matrix noise.
  ``exact=False`` flips each eligible sample independently (Bernoulli). Only the *number* of flips is
  fixed; the new labels of the flipped samples are still drawn at random.
- Inputs are never modified; returned arrays are new.

Schemes: symmetric, asymmetric (class mappings for CIFAR-10, CIFAR-100, Fashion-MNIST or a dict),
pair-flip (k -> k+1), instance-dependent (the part-dependent "PTD" generator of Xia et al., NeurIPS
2020) and any user-given transition matrix. ``parse_noise`` reads the command-line form ``KIND:ARG``
and ``apply_noise`` dispatches a parsed setting.
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "NOISE_KINDS",
    "CIFAR10N_SETS",
    "CIFAR100N_SETS",
    "CIFAR10_MAPPING",
    "FASHION_MNIST_MAPPING",
    "CIFAR100_FINE_TO_COARSE",
    "NoiseResult",
    "NoiseSpec",
    "asymmetric_mapping",
    "symmetric_noise",
    "asymmetric_noise",
    "pairflip_noise",
    "instance_noise",
    "instance_probabilities",
    "matrix_noise",
    "realised_transition",
    "parse_noise",
    "load_matrix",
    "apply_noise",
]

NOISE_KINDS = ("none", "symmetric", "asymmetric", "pairflip", "instance", "matrix", "cifar10n", "cifar100n")
_RATE_KINDS = ("symmetric", "asymmetric", "pairflip", "instance")
CIFAR10N_SETS = ("aggre", "random1", "random2", "random3", "worst")
CIFAR100N_SETS = ("noisy",)
_MATRIX_SUFFIXES = (".npy", ".csv")
_ROW_SUM_TOLERANCE = 1e-6

# CIFAR-10 (Patrini et al. 2017): truck->automobile, bird->airplane, deer->horse, cat<->dog.
CIFAR10_MAPPING = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}
# Fashion-MNIST look-alikes, all swaps: T-shirt/top<->Shirt, Pullover<->Coat, Sandal<->Sneaker.
# Trouser (1), Dress (3), Bag (8) and Ankle boot (9) are never flipped.
FASHION_MNIST_MAPPING = {0: 6, 6: 0, 2: 4, 4: 2, 5: 7, 7: 5}
# CIFAR-100 super-class (coarse label, 0..19) of each fine label 0..99, in the data set's own
# (alphabetical) numbering; every super-class holds exactly 5 fine classes.
CIFAR100_FINE_TO_COARSE = (
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3,
    3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15,
    0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10,
    16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19,
    2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19,
    18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
)  # fmt: skip


def _cifar100_mapping() -> dict[int, int]:
    """Each fine class -> the next fine class (by index) of its super-class, cyclically."""
    coarse = np.asarray(CIFAR100_FINE_TO_COARSE)
    mapping: dict[int, int] = {}
    for group in range(20):
        members = np.flatnonzero(coarse == group).tolist()
        for position, fine in enumerate(members):
            mapping[fine] = members[(position + 1) % len(members)]
    return mapping


_BUILTIN_MAPPINGS = {  # key: lower-cased name without "-" and "_"
    "cifar10": (CIFAR10_MAPPING, 10),
    "cifar100": (_cifar100_mapping(), 100),
    "fashionmnist": (FASHION_MNIST_MAPPING, 10),
}


@dataclass(frozen=True, eq=False)
class NoiseResult:
    """Noisy labels with the truth about them.

    labels: (N,) int64 given labels; is_noisy: (N,) bool, ``labels != true``;
    rate: realised noise rate ``is_noisy.mean()``; transition: (C, C) float64 realised,
    row-stochastic, ``T[i, j] = P(given = j | true = i)`` (identity row for a class absent from true).
    """

    labels: np.ndarray
    is_noisy: np.ndarray
    rate: float
    transition: np.ndarray


# ---------------------------------------------------------------------------- input checks
def _show(value) -> str:
    """repr of a value, with numpy scalars shown as plain Python numbers (1.5, not np.float64(1.5))."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _rng(seed) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be a non-negative int or a numpy.random.Generator; got {_show(seed)}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative int or a numpy.random.Generator; got {_show(seed)}")
    return np.random.default_rng(int(seed))


def _check_num_classes(num_classes, *, minimum: int = 2) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < minimum:
        raise ValueError(f"num_classes must be an int >= {minimum}; got {_show(num_classes)}")
    return int(num_classes)


def _check_labels(labels, num_classes: int, *, name: str = "labels") -> np.ndarray:
    """Return a new (N,) int64 copy of `labels` after checking it holds classes 0..num_classes-1."""
    array = np.asarray(labels)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of class indices; got shape {array.shape}")
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name} must hold integers; got dtype {array.dtype}")
    low, high = int(array.min()), int(array.max())
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"{name} must lie in [0, {num_classes}) for num_classes={num_classes}; got values from {low} to {high}"
        )
    return array.astype(np.int64, copy=True)


def _check_rate(rate, *, name: str = "rate") -> float:
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0.0 <= float(rate) <= 1.0:
        hint = f" (write {float(rate) / 100:g} for {float(rate):g} %)" if _is_percent(rate) else ""
        raise ValueError(f"{name} must be a number in [0, 1]; got {_show(rate)}{hint}")
    return float(rate)


def _is_percent(rate) -> bool:
    return isinstance(rate, numbers.Real) and not isinstance(rate, bool) and 1.0 < float(rate) <= 100.0


def _check_bool(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; got {value!r}")
    return bool(value)


def _check_matrix(matrix, *, source: str = "matrix") -> np.ndarray:
    """Validated float64 copy of a row-stochastic (C, C) matrix, rows rescaled to sum exactly to 1."""
    try:
        array = np.array(matrix, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{source} must be a numeric (C, C) array; got {type(matrix).__name__}") from None
    if array.ndim != 2 or array.shape[0] != array.shape[1] or array.shape[0] < 2:
        raise ValueError(f"{source} must be a square (C, C) matrix with C >= 2; got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{source} must hold finite numbers; it contains NaN or infinity")
    if (array < 0).any():
        row, col = np.argwhere(array < 0)[0]
        raise ValueError(f"{source} must be non-negative; entry [{row}, {col}] is {_show(array[row, col])}")
    sums = array.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > _ROW_SUM_TOLERANCE)
    if bad.size:
        raise ValueError(
            f"{source} rows must each sum to 1 (tolerance {_ROW_SUM_TOLERANCE:g}); row {bad[0]} sums to {_show(sums[bad[0]])}"
        )
    return array / sums[:, None]


# ---------------------------------------------------------------------------- shared machinery
def realised_transition(true, given, *, num_classes) -> np.ndarray:
    """(C, C) float64 row-stochastic ``T[i, j] = #(true=i, given=j) / #(true=i)``; identity row if #(true=i)=0."""
    num_classes = _check_num_classes(num_classes, minimum=1)
    true = _check_labels(true, num_classes, name="true")
    given = _check_labels(given, num_classes, name="given")
    if true.shape != given.shape:
        raise ValueError(f"true and given must have the same length; got {true.size} and {given.size}")
    counts = np.bincount(true * num_classes + given, minlength=num_classes * num_classes)
    counts = counts.reshape(num_classes, num_classes).astype(np.float64)
    totals = counts.sum(axis=1)
    absent = totals == 0
    counts[absent] = np.eye(num_classes)[absent]
    totals[absent] = 1.0
    return counts / totals[:, None]


def _result(true: np.ndarray, noisy: np.ndarray, num_classes: int) -> NoiseResult:
    is_noisy = noisy != true
    return NoiseResult(
        labels=noisy,
        is_noisy=is_noisy,
        rate=float(is_noisy.mean()),
        transition=realised_transition(true, noisy, num_classes=num_classes),
    )


def _class_members(labels: np.ndarray, num_classes: int) -> list[np.ndarray]:
    """Indices of the samples of each class, ascending, in one sort."""
    order = np.argsort(labels, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=num_classes))])
    return [order[bounds[c] : bounds[c + 1]] for c in range(num_classes)]


def _flip_mask(labels: np.ndarray, class_rates: np.ndarray, rng: np.random.Generator, *, exact: bool) -> np.ndarray:
    """(N,) bool: which samples flip, when a sample of true class c flips with probability class_rates[c].

    exact: round(class_rates[c] * n_c) samples of each class, uniformly without replacement;
    otherwise one Bernoulli draw per sample.
    """
    if not exact:
        return rng.random(labels.size) < class_rates[labels]
    mask = np.zeros(labels.size, dtype=bool)
    for c, members in enumerate(_class_members(labels, class_rates.size)):
        count = round(float(class_rates[c]) * members.size)
        if count:
            mask[rng.choice(members, size=count, replace=False)] = True
    return mask


def _draw_categorical(probabilities: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(M,) int64 draws from the rows of an (M, C) array of non-negative weights (each row sum > 0).

    Inverse CDF: dividing the cumulative sums by their last entry makes it exactly 1, so a
    zero-weight class (including trailing ones) can never be drawn, whatever the rounding.
    """
    cumulative = np.cumsum(probabilities, axis=1)
    cumulative /= cumulative[:, -1:]
    draws = rng.random(probabilities.shape[0])
    return (cumulative <= draws[:, None]).sum(axis=1).astype(np.int64)


def _per_class_flip(true, class_rates, destination_weights, rng, *, exact) -> np.ndarray:
    """Flip class c with probability class_rates[c] to a class drawn from destination_weights[c] (C, C)."""
    noisy = true.copy()
    flipped = np.flatnonzero(_flip_mask(true, class_rates, rng, exact=exact))
    if flipped.size:
        noisy[flipped] = _draw_categorical(destination_weights[true[flipped]], rng)
    return noisy


# ---------------------------------------------------------------------------- generators
def symmetric_noise(labels, rate, *, num_classes, seed, exact=True, include_true=False) -> NoiseResult:
    """Symmetric (uniform) noise.

    Default: a chosen sample gets a uniformly drawn *other* class, so the realised rate is `rate`
    (exactly round(rate * N) / N when `exact`), and T = (1 - rate) I + rate / (C - 1) off the diagonal.
    include_true=True: the variant common in the literature where a chosen sample's label is redrawn
    from all C classes, so it may keep its true class; the realised rate is then about
    rate * (C - 1) / C, and `exact` fixes the number of *redrawn* samples, not of changed ones.
    """
    num_classes = _check_num_classes(num_classes)
    true = _check_labels(labels, num_classes)
    rate = _check_rate(rate)
    exact = _check_bool(exact, "exact")
    include_true = _check_bool(include_true, "include_true")
    rng = _rng(seed)
    if exact:
        chosen = np.sort(rng.choice(true.size, size=round(rate * true.size), replace=False))
    else:
        chosen = np.flatnonzero(rng.random(true.size) < rate)
    noisy = true.copy()
    if include_true:
        noisy[chosen] = rng.integers(0, num_classes, size=chosen.size)
    else:
        noisy[chosen] = (true[chosen] + rng.integers(1, num_classes, size=chosen.size)) % num_classes
    return _result(true, noisy, num_classes)


def asymmetric_mapping(mapping, *, num_classes) -> dict[int, int]:
    """Resolve `mapping` to {source class: target class}.

    mapping: "cifar10" (needs C=10), "cifar100" (C=100: each fine class -> the next fine class of its
    super-class, cyclically over the 5 fine classes of each of the 20 super-classes), "fashion-mnist"
    (C=10; spelling of names ignores case, "-" and "_"), or a dict {src: dst} of distinct classes.
    """
    num_classes = _check_num_classes(num_classes)
    if isinstance(mapping, str):
        key = mapping.lower().replace("-", "").replace("_", "")
        if key not in _BUILTIN_MAPPINGS:
            raise ValueError(
                f"mapping must be one of cifar10, cifar100, fashion-mnist or a dict {{src: dst}}; got {mapping!r}"
            )
        table, classes = _BUILTIN_MAPPINGS[key]
        if num_classes != classes:
            raise ValueError(f"the {mapping!r} mapping needs num_classes={classes}; got {num_classes}")
        return dict(table)
    if not isinstance(mapping, dict) or not mapping:
        raise TypeError(f"mapping must be a data set name or a non-empty dict {{src: dst}}; got {mapping!r}")
    resolved: dict[int, int] = {}
    for src, dst in mapping.items():
        for value in (src, dst):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value < num_classes:
                raise ValueError(f"mapping classes must be ints in [0, {num_classes}); got {_show(value)} in {_show(src)}: {_show(dst)}")
        if src == dst:
            raise ValueError(f"mapping must send each class to a different class; got {_show(src)}: {_show(dst)}")
        resolved[int(src)] = int(dst)
    return resolved


def asymmetric_noise(labels, rate, *, mapping, num_classes, seed, exact=True) -> NoiseResult:
    """Class-dependent flips along a mapping (see `asymmetric_mapping`).

    Only classes in the mapping flip: a sample of mapped class c moves to mapping[c] with probability
    `rate` (exactly round(rate * n_c) of them per class when `exact`); other classes stay clean, so
    the realised rate over all samples is `rate` times the fraction of samples in mapped classes.
    """
    num_classes = _check_num_classes(num_classes)
    true = _check_labels(labels, num_classes)
    rate = _check_rate(rate)
    exact = _check_bool(exact, "exact")
    table = asymmetric_mapping(mapping, num_classes=num_classes)
    rng = _rng(seed)
    class_rates = np.zeros(num_classes)
    targets = np.eye(num_classes)
    for src, dst in table.items():
        class_rates[src] = rate
        targets[src] = np.eye(num_classes)[dst]
    return _result(true, _per_class_flip(true, class_rates, targets, rng, exact=exact), num_classes)


def pairflip_noise(labels, rate, *, num_classes, seed, exact=True) -> NoiseResult:
    """Pair-flip noise: class k -> (k + 1) % C with probability `rate` (round(rate * n_k) per class when exact)."""
    num_classes = _check_num_classes(num_classes)
    true = _check_labels(labels, num_classes)
    rate = _check_rate(rate)
    exact = _check_bool(exact, "exact")
    rng = _rng(seed)
    targets = np.roll(np.eye(num_classes), 1, axis=1)  # row k is one-hot at (k + 1) % C
    return _result(true, _per_class_flip(true, np.full(num_classes, rate), targets, rng, exact=exact), num_classes)


def matrix_noise(labels, matrix, *, seed, exact=True) -> NoiseResult:
    """Noise following a row-stochastic (C, C) matrix, ``T[i, j] = P(given j | true i)``; C = matrix size.

    A sample of class i flips with probability 1 - T[i, i] (exactly round((1 - T[i, i]) * n_i) per
    class when `exact`), to class j != i with probability T[i, j] / (1 - T[i, i]).
    """
    transition = _check_matrix(matrix)
    num_classes = transition.shape[0]
    true = _check_labels(labels, num_classes)
    exact = _check_bool(exact, "exact")
    rng = _rng(seed)
    off_diagonal = transition * (1.0 - np.eye(num_classes))
    flip_rates = off_diagonal.sum(axis=1)
    flip_rates[flip_rates < 1e-12] = 0.0  # a row that is (almost) exactly identity never flips
    return _result(true, _per_class_flip(true, flip_rates, off_diagonal, rng, exact=exact), num_classes)


def _truncated_normal(mean: float, std: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """(size,) draws of N(mean, std^2) restricted to [0, 1), by vectorised rejection.

    With mean in [0, 1] and std <= 1 each round accepts with probability >= 0.34.
    """
    if std == 0.0:
        return np.full(size, mean)
    values = np.empty(size)
    pending = np.arange(size)
    while pending.size:
        draws = rng.normal(mean, std, size=pending.size)
        accepted = (draws >= 0.0) & (draws < 1.0)
        values[pending[accepted]] = draws[accepted]
        pending = pending[~accepted]
    return values


def instance_noise(labels, rate, *, features, num_classes, seed, rate_std=0.1) -> NoiseResult:
    """Instance-dependent noise: the part-dependent (PTD) generator of Xia et al., NeurIPS 2020.

    Why: real annotators err more on ambiguous inputs and towards similar classes; here the flip
    probability and the wrong class depend on the input. Each sample's given label is drawn from its
    row of `instance_probabilities` (same arguments; see there for the formula). There is no exact
    mode: every sample has its own flip probability. The mean realised rate is the mean of the
    truncated normal: `rate` away from the edges of [0, 1], but e.g. about 0.08 for rate=0 with
    rate_std=0.1 (rate_std=0 gives every sample the flip probability `rate`).
    """
    true, rng, probabilities = _instance_setup(labels, rate, features, num_classes, seed, rate_std)
    return _result(true, _draw_categorical(probabilities, rng), probabilities.shape[1])


def instance_probabilities(labels, rate, *, features, num_classes, seed, rate_std=0.1) -> np.ndarray:
    """(N, C) float64 per-sample label distributions of the PTD generator; rows sum to 1.

    For sample n with true class y: q_n ~ N(rate, rate_std^2) truncated to [0, 1) (rate_std in
    [0, 1]); per class k a projection W_k (D, C) ~ N(0, 1), drawn for k = 0..C-1 in order;
    x_n = features[n] / ||features[n]|| (a zero row stays zero); s = x_n @ W_y with s[y] = -inf;
    P[n, j] = q_n * softmax(s)_j for j != y and P[n, y] = 1 - q_n.
    features: (N, D) numbers, e.g. flattened normalised images ((N, ...) is flattened to (N, D)).
    With the same seed, `instance_noise` draws its labels from exactly these rows.
    """
    return _instance_setup(labels, rate, features, num_classes, seed, rate_std)[2]


def _instance_setup(labels, rate, features, num_classes, seed, rate_std):
    """Checked true labels, the generator (advanced past the probabilities) and the (N, C) probabilities."""
    num_classes = _check_num_classes(num_classes)
    true = _check_labels(labels, num_classes)
    rate = _check_rate(rate)
    if isinstance(rate_std, bool) or not isinstance(rate_std, numbers.Real) or not 0.0 <= float(rate_std) <= 1.0:
        raise ValueError(f"rate_std must be a number in [0, 1]; got {_show(rate_std)}")
    if features is None:
        raise ValueError("instance noise needs features: an (N, D) array with one row per label")
    inputs = np.asarray(features)
    if inputs.ndim < 2 or inputs.shape[0] != true.size or inputs[0].size == 0:
        raise ValueError(f"features must be an (N, D) array with N={true.size} rows and D >= 1; got shape {inputs.shape}")
    if inputs.dtype == np.bool_ or not (np.issubdtype(inputs.dtype, np.integer) or np.issubdtype(inputs.dtype, np.floating)):
        raise TypeError(f"features must hold real numbers; got dtype {inputs.dtype}")
    inputs = inputs.reshape(true.size, -1)
    if np.issubdtype(inputs.dtype, np.floating) and not np.isfinite(inputs).all():
        raise ValueError("features must be finite; they contain NaN or infinity")
    rng = _rng(seed)

    flip = _truncated_normal(rate, float(rate_std), true.size, rng)
    probabilities = np.empty((true.size, num_classes))
    for k, members in enumerate(_class_members(true, num_classes)):
        projection = rng.standard_normal((inputs.shape[1], num_classes))  # drawn for every class, in order
        if not members.size:
            continue
        x = inputs[members].astype(np.float64)  # per class: never a float64 copy of all features
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x /= np.where(norms > 0, norms, 1.0)
        scores = x @ projection
        scores[:, k] = -np.inf
        scores = np.exp(scores - scores.max(axis=1, keepdims=True))
        probabilities[members] = flip[members, None] * scores / scores.sum(axis=1, keepdims=True)
        probabilities[members, k] = 1.0 - flip[members]
    return true, rng, probabilities


# ---------------------------------------------------------------------------- command-line settings
def _format_rate(rate: float) -> str:
    text = repr(float(rate))
    return text[:-2] if text.endswith(".0") else text


@dataclass(frozen=True)
class NoiseSpec:
    """A noise setting as written on the command line: ``KIND`` or ``KIND:ARG``.

    kind: one of NOISE_KINDS; rate: the flip rate in [0, 1] for symmetric, asymmetric, pairflip and
    instance (else None); arg: the matrix file (.npy or .csv) for matrix, the label set for cifar10n
    (aggre, random1, random2, random3, worst) and cifar100n (noisy), else None.
    ``str(spec)`` gives the canonical text, which `parse_noise` reads back to an equal spec.
    """

    kind: str
    rate: float | None = None
    arg: str | None = None

    def __post_init__(self):
        if self.kind not in NOISE_KINDS:
            raise ValueError(f"noise kind must be one of {', '.join(NOISE_KINDS)}; got {self.kind!r}")
        if self.kind in _RATE_KINDS:
            if self.rate is None:
                raise ValueError(f"noise {self.kind!r} needs a rate in [0, 1], written {self.kind}:RATE (e.g. {self.kind}:0.4)")
            object.__setattr__(self, "rate", _check_rate(self.rate, name=f"the {self.kind} noise rate"))
        elif self.rate is not None:
            raise ValueError(f"noise {self.kind!r} takes no rate; got rate={self.rate!r}")
        if self.kind == "matrix":
            if not isinstance(self.arg, str) or not self.arg.lower().endswith(_MATRIX_SUFFIXES):
                raise ValueError(f"matrix noise needs a .npy or .csv file, written matrix:PATH; got {self.arg!r}")
        elif self.kind in ("cifar10n", "cifar100n"):
            allowed = CIFAR10N_SETS if self.kind == "cifar10n" else CIFAR100N_SETS
            if self.arg not in allowed:
                raise ValueError(f"{self.kind} label set must be one of {', '.join(allowed)}; got {self.arg!r}")
        elif self.arg is not None:
            raise ValueError(f"noise {self.kind!r} takes no argument; got arg={self.arg!r}")

    def __str__(self) -> str:
        if self.kind == "none":
            return "none"
        return f"{self.kind}:{_format_rate(self.rate) if self.rate is not None else self.arg}"


def parse_noise(text: str) -> NoiseSpec:
    """Read ``none``, ``symmetric:0.5``, ``asymmetric:0.4``, ``pairflip:0.45``, ``instance:0.4``,
    ``matrix:PATH`` (.npy or .csv), ``cifar10n:worst`` (aggre|random1|random2|random3|worst) or
    ``cifar100n:noisy``. The kind is case-insensitive; only the first ":" separates (paths may hold ":")."""
    if isinstance(text, NoiseSpec):
        return text
    if not isinstance(text, str):
        raise TypeError(f"noise must be a string such as 'symmetric:0.5'; got {text!r}")
    kind, sep, arg = text.strip().partition(":")
    kind = kind.strip().lower()
    if kind not in NOISE_KINDS:
        raise ValueError(f"noise kind must be one of {', '.join(NOISE_KINDS)}; got {kind!r} in {text!r}")
    if kind == "none":
        if sep:
            raise ValueError(f"noise 'none' takes no argument; got {text!r}")
        return NoiseSpec("none")
    arg = arg.strip()
    if not arg:
        example = {"matrix": "matrix:T.npy", "cifar10n": "cifar10n:worst", "cifar100n": "cifar100n:noisy"}
        raise ValueError(f"noise {text!r} is missing its argument; write it like {example.get(kind, kind + ':0.4')}")
    if kind in _RATE_KINDS:
        try:
            rate = float(arg)
        except ValueError:
            raise ValueError(f"noise rate must be a number in [0, 1], written {kind}:RATE; got {text!r}") from None
        if not math.isfinite(rate):
            raise ValueError(f"noise rate must be a number in [0, 1], written {kind}:RATE; got {text!r}")
        return NoiseSpec(kind, rate=rate)
    if kind in ("cifar10n", "cifar100n"):
        arg = arg.lower()
    return NoiseSpec(kind, arg=arg)


def load_matrix(path) -> np.ndarray:
    """Read a row-stochastic (C, C) matrix from a .npy or a comma-separated .csv file ("#" starts a comment).

    Returns a float64 array with rows rescaled to sum exactly to 1 (after checking they sum to 1
    within 1e-6). Raises FileNotFoundError for a missing file, ValueError for any other problem.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike; got {path!r}")
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _MATRIX_SUFFIXES:
        raise ValueError(f"matrix file must end in .npy or .csv; got {str(path)!r}")
    if not path.is_file():
        raise FileNotFoundError(f"matrix file {str(path)!r} does not exist")
    try:
        if suffix == ".npy":
            matrix = np.load(path, allow_pickle=False)
        else:
            matrix = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
    except (ValueError, OSError, EOFError) as error:
        raise ValueError(f"matrix file {str(path)!r} could not be read as a {suffix} matrix: {error}") from None
    return _check_matrix(matrix, source=f"matrix in {str(path)!r}")


def apply_noise(spec, labels, *, num_classes, seed, features=None, mapping=None) -> NoiseResult:
    """Apply a noise setting (NoiseSpec or its text) to true labels, with the defaults of each generator.

    mapping: for asymmetric noise, a data set name ("cifar10", "cifar100", "fashion-mnist") or a dict;
    features: for instance noise, (N, D). cifar10n/cifar100n are human label sets, not generators:
    they are refused here (casam.data loads them). "none" returns a copy of the labels with rate 0.
    """
    spec = parse_noise(spec)
    num_classes = _check_num_classes(num_classes)
    if spec.kind == "none":
        true = _check_labels(labels, num_classes)
        _rng(seed)  # same seed checks as every other kind
        return _result(true, true.copy(), num_classes)
    if spec.kind == "symmetric":
        return symmetric_noise(labels, spec.rate, num_classes=num_classes, seed=seed)
    if spec.kind == "asymmetric":
        if mapping is None:
            raise ValueError("asymmetric noise needs a mapping: cifar10, cifar100, fashion-mnist or a dict {src: dst}")
        return asymmetric_noise(labels, spec.rate, mapping=mapping, num_classes=num_classes, seed=seed)
    if spec.kind == "pairflip":
        return pairflip_noise(labels, spec.rate, num_classes=num_classes, seed=seed)
    if spec.kind == "instance":
        return instance_noise(labels, spec.rate, features=features, num_classes=num_classes, seed=seed)
    if spec.kind == "matrix":
        matrix = load_matrix(spec.arg)
        if matrix.shape[0] != num_classes:
            raise ValueError(f"matrix in {spec.arg!r} is {matrix.shape[0]}x{matrix.shape[0]} but num_classes is {num_classes}")
        return matrix_noise(labels, matrix, seed=seed)
    raise ValueError(f"{spec} is a human label set, not a synthetic noise model: casam.data loads it (NoisyDataset.with_noise)")
