"""`casam data`: sizes, classes, realised noise rate and transition matrix; errors as one line, exit 2."""

import re

import numpy as np
import pytest

from casam import cli
from casam.commands import data as data_command
from casam.data import from_arrays


def _run(capsys, argv):
    code = data_command.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_fashion_mnist_symmetric_noise_report(capsys):
    code, out, err = _run(capsys, ["--dataset", "fashion-mnist", "--noise", "symmetric:0.5", "--seed", "0", "--train-subset", "2000"])
    assert code == 0 and err == ""
    assert "train:       2,000 samples (a seeded subset of 60,000)" in out
    assert "test:        10,000 samples" in out and "image shape: 1x28x28 uint8" in out
    assert "classes (10): T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag, Ankle boot" in out
    assert "realised noise rate: 0.5000 (1,000 of 2,000 given labels differ from the true ones)" in out
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("realised transition matrix")) + 1
    header, rows = lines[start], lines[start + 1 : start + 11]
    assert header.split() == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle", "boot"]
    matrix = np.array([[float(v) for v in re.findall(r"\d\.\d\d", row)] for row in rows])
    assert rows[0].startswith("T-shirt/top") and rows[9].startswith("Ankle boot") and matrix.shape == (10, 10)
    assert np.allclose(matrix.sum(axis=1), 1.0, atol=0.06)  # 2-decimal rounding
    assert (np.abs(np.diag(matrix) - 0.5) < 0.08).all()


def test_same_flags_same_output_and_seed_changes_it(capsys):
    argv = ["--dataset", "digits", "--noise", "pairflip:0.3", "--train-subset", "none"]
    first, second = _run(capsys, argv)[1], _run(capsys, argv)[1]
    other = _run(capsys, [*argv, "--seed", "1"])[1]
    assert first == second and first != other
    assert "train:       1,438 samples\n" in first and "noise:       pairflip:0.3 (seed 0)" in first


def test_a_subset_larger_than_the_split_means_the_whole_split(capsys):
    code, out, _ = _run(capsys, ["--dataset", "digits", "--noise", "none", "--train-subset", "5000"])
    assert code == 0 and "train:       1,438 samples\n" in out  # as in casam train


def test_the_cli_dispatches_to_it(capsys):
    assert cli.main(["data", "--dataset", "digits", "--noise", "none", "--train-subset", "100"]) == 0
    assert "realised noise rate: 0.0000" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataset", "mnist"], "unknown data set 'mnist'; choose one of: fashion-mnist, cifar10, cifar100, digits"),
        (["--dataset", "digits", "--noise", "symmetric:1.5"], r"rate must be a number in \[0, 1\]; got 1.5"),
        (["--dataset", "digits", "--noise", "gaussian:0.2"], "noise kind must be one of"),
        (["--dataset", "digits", "--noise", "cifar10n:worst"], "cifar10n labels belong to the cifar10 train split; this data set is 'digits'"),
        (["--dataset", "digits", "--train-subset", "0"], "argument --train-subset: must be a positive number of samples or 'none'; got '0'"),
        (["--seed", "-1"], "argument --seed: must be a non-negative integer"),
        (["--frobnicate"], "unrecognized arguments: --frobnicate"),
    ],
)
def test_bad_input_is_one_line_on_stderr_and_exit_code_2(capsys, argv, message):
    code, out, err = _run(capsys, argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("casam data: ") and "Traceback" not in err
    assert re.search(message, err)


def test_missing_data_files_are_one_line_saying_how_to_get_them(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    code, out, err = _run(capsys, ["--dataset", "cifar10", "--data-dir", str(tmp_path), "--no-download"])
    assert code == 2 and err.count("\n") == 1
    assert "cifar-10-batches-py" in err and "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in err


def test_many_classes_print_a_summary_unless_asked():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(30), 20)
    data = from_arrays(rng.integers(0, 256, (600, 2, 2), dtype=np.uint8), labels, classes=[f"k{i}" for i in range(30)])
    noisy = data.with_noise("pairflip:0.25", seed=0)
    summary = data_command.describe(noisy, data, full_size=600, noise_text="pairflip:0.25", noise_seed=0, full_matrix=False)
    assert "(30 classes: per true class, the fraction kept and the top flips; --full-matrix prints it all)" in summary
    assert "k0   kept 0.75  -> k1 0.25" in summary and "k29  kept 0.75  -> k0 0.25" in summary
    full = data_command.describe(noisy, data, full_size=600, noise_text="pairflip:0.25", noise_seed=0, full_matrix=True)
    assert len(full.splitlines()) == len(summary.splitlines()) and full.splitlines()[-1].split()[:2] == ["k29", "0.25"]
