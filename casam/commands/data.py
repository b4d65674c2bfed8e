"""`casam data`: load a data set, apply a noise setting and print what training would see.

Same defaults and the same seeding as `casam train` (subset with --seed, noise with --noise-seed or
--seed), so the labels shown are the labels a run with the same flags trains on.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

FULL_MATRIX_MAX_CLASSES = 20  # beyond this, print a per-class summary unless --full-matrix


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        raise _UsageError(message)


def _subset_size(text: str) -> int | None:
    if text.strip().lower() in ("none", "all"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number of samples or 'none'; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive number of samples or 'none'; got {text!r}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer; got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from casam.config import TrainConfig
    from casam.data import DATASETS

    defaults = TrainConfig()
    parser = _Parser(
        prog="casam data",
        description="Show a data set's sizes, classes and the realised label noise (rate and transition matrix) "
        "before training on it. Defaults are casam train's.",
    )
    parser.add_argument("--dataset", default=defaults.dataset, help=f"{', '.join(DATASETS)} (default: {defaults.dataset})")
    parser.add_argument("--noise", default=defaults.noise, help=f"TYPE:RATE, e.g. symmetric:0.5, asymmetric:0.4, pairflip:0.45, "
                        f"instance:0.4, matrix:PATH, cifar10n:worst, cifar100n:noisy, none (default: {defaults.noise})")
    parser.add_argument("--seed", type=_seed, default=defaults.seed, help=f"seed of the subset and, unless --noise-seed, of the noise (default: {defaults.seed})")
    parser.add_argument("--noise-seed", type=_seed, default=None, help="seed of the noise (default: --seed)")
    parser.add_argument("--data-dir", default=defaults.data_dir, help="folder with the data files (default: the system folder and ~/.cache/casam)")
    parser.add_argument("--train-subset", type=_subset_size, default=defaults.train_subset, metavar="N",
                        help=f"seeded, class-stratified subset of the training split; none: all of it (default: {defaults.train_subset})")
    parser.add_argument("--no-download", action="store_true", help="never download missing files")
    parser.add_argument("--full-matrix", action="store_true", help=f"print the whole transition matrix even for more than {FULL_MATRIX_MAX_CLASSES} classes")
    return parser


def format_matrix(matrix: np.ndarray, classes: list[str]) -> str:
    """Rows = true class, columns = given class, 2 decimals, class names as row and column labels."""
    label = max(len(c) for c in classes)
    widths = [max(4, len(c)) for c in classes]  # each column as wide as its name
    head = " " * label + "".join(f"  {c:>{w}}" for c, w in zip(classes, widths))
    rows = [f"{name:<{label}}" + "".join(f"  {v:>{w}.2f}" for v, w in zip(row, widths)) for name, row in zip(classes, matrix)]
    return "\n".join([head, *rows])


def format_summary(matrix: np.ndarray, classes: list[str], *, top: int = 3) -> str:
    """Per true class: the fraction kept and the largest off-diagonal entries (for many classes)."""
    width = max(len(c) for c in classes)
    lines = []
    for i, (name, row) in enumerate(zip(classes, matrix)):
        off = row.copy()
        off[i] = -1.0
        order = [j for j in np.argsort(-off, kind="stable")[:top] if off[j] > 0]
        flips = ", ".join(f"{classes[j]} {row[j]:.2f}" for j in order) or "-"
        lines.append(f"{name:<{width}}  kept {row[i]:.2f}  -> {flips}")
    return "\n".join(lines)


def describe(train, test, *, full_size: int, noise_text: str, noise_seed: int, full_matrix: bool) -> str:
    c, h, w = train.images.shape[1:]
    subset = f" (a seeded subset of {full_size:,})" if len(train) < full_size else ""
    lines = [
        f"data set:    {train.name}",
        f"train:       {len(train):,} samples{subset}",
        f"test:        {len(test):,} samples",
        f"image shape: {c}x{h}x{w} {str(train.images.dtype).replace('torch.', '')}",
        f"classes ({train.num_classes}): {', '.join(train.classes)}",
    ]
    noise = train.noise
    wrong = int(np.count_nonzero(noise.is_noisy))
    lines += [
        f"noise:       {noise_text} (seed {noise_seed})",
        f"realised noise rate: {noise.rate:.4f} ({wrong:,} of {len(train):,} given labels differ from the true ones)",
        "",
        "realised transition matrix T[i, j] = P(given j | true i); rows: true class, columns: given class",
    ]
    matrix = np.asarray(noise.transition)
    if full_matrix or train.num_classes <= FULL_MATRIX_MAX_CLASSES:
        lines.append(format_matrix(matrix, train.classes))
    else:
        lines.append(f"({train.num_classes} classes: per true class, the fraction kept and the top flips; --full-matrix prints it all)")
        lines.append(format_summary(matrix, train.classes))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    try:
        args = build_parser().parse_args(argv)
        from casam.data import load_dataset
        from casam.noise import parse_noise

        spec = parse_noise(args.noise)  # refuse a bad setting before loading anything
        train, test = load_dataset(args.dataset, data_dir=args.data_dir, download=not args.no_download)
        full_size = len(train)
        if args.train_subset is not None and args.train_subset < len(train):
            train = train.subset(args.train_subset, seed=args.seed)
        noise_seed = args.seed if args.noise_seed is None else args.noise_seed
        train = train.with_noise(spec, seed=noise_seed, data_dir=args.data_dir)
        text = describe(train, test, full_size=full_size, noise_text=str(spec), noise_seed=noise_seed, full_matrix=args.full_matrix)
    except (_UsageError, ValueError, TypeError, FileNotFoundError, ImportError) as error:
        if os.environ.get("CASAM_DEBUG"):
            raise
        message = " ".join(str(error).split())
        print(f"casam data: {message}", file=sys.stderr)
        return 2
    print(text)
    return 0
