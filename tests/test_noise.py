"""Label-noise generators: realised rates, transition matrices, mappings, determinism, settings, bad input."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

from casam.noise import (
    CIFAR100_FINE_TO_COARSE,
    NoiseResult,
    NoiseSpec,
    apply_noise,
    asymmetric_mapping,
    asymmetric_noise,
    instance_noise,
    instance_probabilities,
    load_matrix,
    matrix_noise,
    pairflip_noise,
    parse_noise,
    realised_transition,
    symmetric_noise,
)

DIGITS = load_digits()
DIGIT_LABELS = DIGITS.target.astype(np.int64)  # 1797 real labels, unequal class sizes (174..183)
DIGIT_FEATURES = DIGITS.data  # (1797, 64)


def balanced(n, num_classes):
    return np.arange(n, dtype=np.int64) % num_classes


def count_transition(true, given, num_classes):
    """Independent reference: count (true, given) pairs class by class."""
    matrix = np.eye(num_classes)
    for i in range(num_classes):
        row = given[true == i]
        if row.size:
            matrix[i] = [(row == j).mean() for j in range(num_classes)]
    return matrix


def check_consistent(result, true, num_classes):
    """The four fields of a NoiseResult agree with each other and with the labels."""
    assert isinstance(result, NoiseResult)
    assert result.labels.dtype == np.int64 and result.labels.shape == true.shape
    assert result.is_noisy.dtype == np.bool_
    np.testing.assert_array_equal(result.is_noisy, result.labels != true)
    assert result.rate == pytest.approx(result.is_noisy.mean(), abs=0)
    assert result.transition.dtype == np.float64 and result.transition.shape == (num_classes, num_classes)
    assert (result.transition >= 0).all()
    np.testing.assert_allclose(result.transition.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(result.transition, count_transition(true, result.labels, num_classes), atol=1e-12)


# ---------------------------------------------------------------------------- symmetric
@pytest.mark.parametrize("rate", [0.0, 0.2, 0.5, 0.8, 1.0])
def test_symmetric_exact_mode_flips_exactly_round_rate_n(rate):
    result = symmetric_noise(DIGIT_LABELS, rate, num_classes=10, seed=1)
    check_consistent(result, DIGIT_LABELS, 10)
    assert result.is_noisy.sum() == round(rate * DIGIT_LABELS.size)


def test_symmetric_bernoulli_rate_and_uniform_transition():
    true = balanced(20000, 5)
    result = symmetric_noise(true, 0.4, num_classes=5, seed=2, exact=False)
    check_consistent(result, true, 5)
    assert result.rate == pytest.approx(0.4, abs=0.02)
    counts = {symmetric_noise(true, 0.4, num_classes=5, seed=s, exact=False).is_noisy.sum() for s in range(4)}
    assert len(counts) > 1  # Bernoulli: the number of flips varies with the seed
    expected = np.full((5, 5), 0.4 / 4) + np.eye(5) * (0.6 - 0.1)
    np.testing.assert_allclose(result.transition, expected, atol=0.02)


def test_symmetric_default_never_keeps_true_class():
    result = symmetric_noise(DIGIT_LABELS, 1.0, num_classes=10, seed=0)
    assert result.is_noisy.all()
    assert np.diag(result.transition).max() == 0.0
    # every other class is reached
    assert (result.transition + np.eye(10) > 0).all()


def test_symmetric_include_true_may_keep_true_class():
    true = balanced(20000, 4)
    result = symmetric_noise(true, 1.0, num_classes=4, seed=0, include_true=True)
    check_consistent(result, true, 4)
    assert 0 < (~result.is_noisy).sum()
    assert result.rate == pytest.approx(1.0 * 3 / 4, abs=0.02)
    np.testing.assert_allclose(result.transition, np.full((4, 4), 0.25), atol=0.03)
    half = symmetric_noise(true, 0.5, num_classes=4, seed=0, include_true=True, exact=False)
    assert half.rate == pytest.approx(0.5 * 3 / 4, abs=0.02)


# ---------------------------------------------------------------------------- asymmetric
CIFAR10_PAIRS = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}
FASHION_PAIRS = {0: 6, 6: 0, 2: 4, 4: 2, 5: 7, 7: 5}


@pytest.mark.parametrize("name, pairs", [("cifar10", CIFAR10_PAIRS), ("fashion-mnist", FASHION_PAIRS)])
def test_asymmetric_builtin_10_class_mappings(name, pairs):
    true = balanced(10000, 10)
    result = asymmetric_noise(true, 0.4, mapping=name, num_classes=10, seed=0)
    check_consistent(result, true, 10)
    assert asymmetric_mapping(name, num_classes=10) == pairs
    for c in range(10):
        row = result.transition[c]
        if c in pairs:
            assert row[c] == pytest.approx(0.6) and row[pairs[c]] == pytest.approx(0.4)
        else:
            np.testing.assert_array_equal(row, np.eye(10)[c])
    # exact per class: round(0.4 * 1000) of each mapped class, nothing else
    assert result.is_noisy.sum() == 400 * len(pairs)
    assert result.rate == pytest.approx(0.4 * len(pairs) / 10)


def test_asymmetric_cifar100_moves_within_super_class_cyclically():
    coarse = np.asarray(CIFAR100_FINE_TO_COARSE)
    assert coarse.shape == (100,) and (np.bincount(coarse, minlength=20) == 5).all()
    # spot checks of the real CIFAR-100 taxonomy (fine indices are alphabetical class names)
    for members in ([47, 52, 56, 59, 96], [1, 32, 67, 73, 91], [2, 11, 35, 46, 98], [3, 42, 43, 88, 97]):
        assert len(set(coarse[members])) == 1, members  # trees, fish, people, large carnivores
    mapping = asymmetric_mapping("cifar100", num_classes=100)
    assert sorted(mapping) == list(range(100)) and sorted(mapping.values()) == list(range(100))
    assert mapping[47] == 52 and mapping[96] == 47  # maple -> oak, willow -> maple (wraps)
    for fine, target in mapping.items():
        assert coarse[fine] == coarse[target] and fine != target
        walk = fine
        for _ in range(5):
            walk = mapping[walk]
        assert walk == fine  # a 5-cycle over the super-class

    true = balanced(10000, 100)
    result = asymmetric_noise(true, 0.3, mapping="CIFAR-100", num_classes=100, seed=4)
    check_consistent(result, true, 100)
    assert (coarse[result.labels] == coarse[true]).all()
    flipped = result.is_noisy
    np.testing.assert_array_equal(result.labels[flipped], [mapping[c] for c in true[flipped]])
    assert result.is_noisy.sum() == 100 * 30


def test_asymmetric_dict_mapping_and_bernoulli_mode():
    true = balanced(30000, 3)
    result = asymmetric_noise(true, 0.25, mapping={0: 2}, num_classes=3, seed=5, exact=False)
    check_consistent(result, true, 3)
    assert set(np.unique(true[result.is_noisy])) == {0}
    assert (result.labels[result.is_noisy] == 2).all()
    assert result.transition[0, 2] == pytest.approx(0.25, abs=0.02)
    assert result.transition[0, 2] != 0.25  # Bernoulli, not the exact count


# ---------------------------------------------------------------------------- pair-flip
def test_pairflip_moves_k_to_k_plus_one_exact_per_class():
    result = pairflip_noise(DIGIT_LABELS, 0.45, num_classes=10, seed=0)
    check_consistent(result, DIGIT_LABELS, 10)
    noisy = result.is_noisy
    np.testing.assert_array_equal(result.labels[noisy], (DIGIT_LABELS[noisy] + 1) % 10)
    assert (result.labels[DIGIT_LABELS == 9] != 0).any() and (result.labels[DIGIT_LABELS == 9] == 0).any()
    counts = np.bincount(DIGIT_LABELS, minlength=10)
    np.testing.assert_array_equal(np.bincount(DIGIT_LABELS[noisy], minlength=10), [round(0.45 * n) for n in counts])
    assert result.is_noisy.sum() != round(0.45 * DIGIT_LABELS.size)  # per-class rounding, documented
    bernoulli = pairflip_noise(balanced(20000, 10), 0.45, num_classes=10, seed=0, exact=False)
    assert bernoulli.rate == pytest.approx(0.45, abs=0.02)


# ---------------------------------------------------------------------------- matrix
def random_matrix(num_classes, seed):
    rng = np.random.default_rng(seed)
    off = rng.random((num_classes, num_classes)) * (1 - np.eye(num_classes))
    off[0, 1:] = [0.0] * (num_classes - 2) + [1.0]  # class 0 only ever goes to the last class
    off *= (0.4 / off.sum(axis=1))[:, None]
    return off + 0.6 * np.eye(num_classes)


@pytest.mark.parametrize("exact", [True, False])
def test_matrix_noise_follows_the_matrix(exact):
    matrix = random_matrix(5, 0)
    true = balanced(50000, 5)
    result = matrix_noise(true, matrix, seed=1, exact=exact)
    check_consistent(result, true, 5)
    np.testing.assert_allclose(result.transition, matrix, atol=0.015)
    assert (result.transition[0, 1:4] == 0).all()  # zero entries are never realised
    if exact:
        np.testing.assert_allclose(np.diag(result.transition), 0.6, atol=0)
    assert matrix.tolist() == random_matrix(5, 0).tolist()  # input untouched


def test_matrix_identity_gives_no_noise_and_permutation_flips_all():
    true = balanced(100, 4)
    assert matrix_noise(true, np.eye(4), seed=0).rate == 0.0
    swap = np.eye(4)[[1, 0, 3, 2]]
    result = matrix_noise(true, swap, seed=0, exact=False)
    np.testing.assert_array_equal(result.labels, true ^ 1)


# ---------------------------------------------------------------------------- instance-dependent
def test_instance_noise_rate_per_sample_variation_and_draws_follow_probabilities():
    true = np.tile(DIGIT_LABELS, 10)
    features = np.tile(DIGIT_FEATURES, (10, 1))
    probabilities = instance_probabilities(true, 0.4, features=features, num_classes=10, seed=7)
    result = instance_noise(true, 0.4, features=features, num_classes=10, seed=7)
    check_consistent(result, true, 10)

    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-12)
    flip = 1.0 - probabilities[np.arange(true.size), true]
    assert flip.mean() == pytest.approx(0.4, abs=0.01)
    assert flip.std() == pytest.approx(0.1, abs=0.01)  # per-sample rates vary around the target
    assert flip.min() >= 0.0 and flip.max() < 1.0
    assert result.rate == pytest.approx(0.4, abs=0.02)
    # instance dependence: the wrong-class distribution differs between two images of one class
    zeros = np.flatnonzero(true == 0)[:2]
    wrong = probabilities[zeros] / flip[zeros, None]
    assert np.abs(wrong[0] - wrong[1]).max() > 0.05
    # the labels are drawn from these rows: per class, realised row ~ mean probability row
    expected = np.stack([probabilities[true == c].mean(axis=0) for c in range(10)])
    np.testing.assert_allclose(result.transition, expected, atol=0.04)
    assert (np.abs(expected - np.full((10, 10), 0.4 / 9) - np.eye(10) * (0.6 - 0.4 / 9)) > 0.03).any()


def test_instance_noise_fixed_rate_and_features_of_any_shape():
    images = DIGIT_FEATURES.reshape(-1, 1, 8, 8)
    probabilities = instance_probabilities(DIGIT_LABELS, 0.3, features=images, num_classes=10, seed=0, rate_std=0)
    np.testing.assert_allclose(probabilities[np.arange(DIGIT_LABELS.size), DIGIT_LABELS], 0.7)
    flat = instance_probabilities(DIGIT_LABELS, 0.3, features=DIGIT_FEATURES, num_classes=10, seed=0, rate_std=0)
    np.testing.assert_allclose(probabilities, flat, atol=0)


def test_instance_noise_is_deterministic_per_seed():
    first = instance_noise(DIGIT_LABELS, 0.4, features=DIGIT_FEATURES, num_classes=10, seed=3)
    again = instance_noise(DIGIT_LABELS, 0.4, features=DIGIT_FEATURES.copy(), num_classes=10, seed=3)
    other = instance_noise(DIGIT_LABELS, 0.4, features=DIGIT_FEATURES, num_classes=10, seed=4)
    np.testing.assert_array_equal(first.labels, again.labels)
    assert (first.labels != other.labels).any()


# ---------------------------------------------------------------------------- determinism
GENERATORS = {
    "symmetric": lambda y, seed: symmetric_noise(y, 0.5, num_classes=10, seed=seed),
    "symmetric-bernoulli": lambda y, seed: symmetric_noise(y, 0.5, num_classes=10, seed=seed, exact=False),
    "asymmetric": lambda y, seed: asymmetric_noise(y, 0.4, mapping="cifar10", num_classes=10, seed=seed),
    "pairflip": lambda y, seed: pairflip_noise(y, 0.45, num_classes=10, seed=seed),
    "matrix": lambda y, seed: matrix_noise(y, np.full((10, 10), 0.1), seed=seed),
    "instance": lambda y, seed: instance_noise(y, 0.4, features=DIGIT_FEATURES, num_classes=10, seed=seed),
}


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_same_seed_same_labels_other_seed_other_labels_inputs_untouched(name):
    generate = GENERATORS[name]
    labels = DIGIT_LABELS.copy()
    first = generate(labels, 11)
    np.testing.assert_array_equal(labels, DIGIT_LABELS)  # not modified in place
    assert first.labels is not labels
    np.testing.assert_array_equal(first.labels, generate(labels, 11).labels)
    np.testing.assert_array_equal(first.labels, generate(labels, np.random.default_rng(11)).labels)
    assert (first.labels != generate(labels, 12).labels).any()


def test_symmetric_labels_are_pinned_for_a_seed():
    # guards "same seed, same labels on any machine": a change of algorithm would change these
    result = symmetric_noise(np.zeros(12, dtype=np.int64), 0.5, num_classes=3, seed=0)
    assert result.is_noisy.sum() == 6
    again = symmetric_noise(np.zeros(12, dtype=np.int64), 0.5, num_classes=3, seed=0)
    np.testing.assert_array_equal(result.labels, again.labels)
    assert result.labels.tolist() == [2, 0, 2, 2, 2, 2, 0, 2, 0, 0, 0, 0]


# ---------------------------------------------------------------------------- realised transition
def test_realised_transition_counts_and_identity_rows_for_absent_classes():
    true = np.array([0, 0, 0, 0, 2, 2])
    given = np.array([0, 1, 1, 2, 2, 0])
    expected = np.array([[0.25, 0.5, 0.25], [0.0, 1.0, 0.0], [0.5, 0.0, 0.5]])
    np.testing.assert_allclose(realised_transition(true, given, num_classes=3), expected)


# ---------------------------------------------------------------------------- settings
@pytest.mark.parametrize(
    "text, kind, rate, arg",
    [
        ("none", "none", None, None),
        ("symmetric:0.5", "symmetric", 0.5, None),
        ("asymmetric:0.4", "asymmetric", 0.4, None),
        ("pairflip:0.45", "pairflip", 0.45, None),
        ("instance:0.4", "instance", 0.4, None),
        ("symmetric:1", "symmetric", 1.0, None),
        ("symmetric:0", "symmetric", 0.0, None),
        ("matrix:/tmp/noise T.npy", "matrix", None, "/tmp/noise T.npy"),
        ("matrix:C:/data/T.csv", "matrix", None, "C:/data/T.csv"),
        ("cifar10n:worst", "cifar10n", None, "worst"),
        ("cifar10n:aggre", "cifar10n", None, "aggre"),
        ("cifar100n:noisy", "cifar100n", None, "noisy"),
    ],
)
def test_parse_noise_and_str_round_trip(text, kind, rate, arg):
    spec = parse_noise(text)
    assert (spec.kind, spec.rate, spec.arg) == (kind, rate, arg)
    assert str(spec) == text
    assert parse_noise(str(spec)) == spec


def test_parse_noise_canonicalises_spelling():
    assert str(parse_noise("  Symmetric:.50 ")) == "symmetric:0.5"
    assert str(parse_noise("CIFAR10N:Worst")) == "cifar10n:worst"
    assert parse_noise("pairflip:0.45") == NoiseSpec("pairflip", 0.45, None)


# ---------------------------------------------------------------------------- load_matrix / apply_noise
def test_load_matrix_reads_npy_and_csv(tmp_path):
    matrix = random_matrix(4, 1)
    np.save(tmp_path / "t.npy", matrix)
    (tmp_path / "t.csv").write_text("# T[i, j] = P(given j | true i)\n" + "\n".join(",".join(repr(float(v)) for v in r) for r in matrix))
    np.testing.assert_allclose(load_matrix(tmp_path / "t.npy"), matrix, atol=1e-15)
    np.testing.assert_allclose(load_matrix(str(tmp_path / "t.csv")), matrix, atol=1e-15)
    rounded = np.round(matrix, 7)  # rows off by < 1e-6 are accepted and rescaled to sum to 1
    np.save(tmp_path / "r.npy", rounded)
    np.testing.assert_allclose(load_matrix(tmp_path / "r.npy").sum(axis=1), 1.0, atol=1e-15)


def test_apply_noise_dispatches_to_the_generators(tmp_path):
    y = DIGIT_LABELS
    same = [
        (apply_noise("symmetric:0.5", y, num_classes=10, seed=1), symmetric_noise(y, 0.5, num_classes=10, seed=1)),
        (apply_noise(parse_noise("asymmetric:0.4"), y, num_classes=10, seed=1, mapping="fashion-mnist"),
         asymmetric_noise(y, 0.4, mapping="fashion-mnist", num_classes=10, seed=1)),
        (apply_noise("pairflip:0.45", y, num_classes=10, seed=1), pairflip_noise(y, 0.45, num_classes=10, seed=1)),
        (apply_noise("instance:0.4", y, num_classes=10, seed=1, features=DIGIT_FEATURES),
         instance_noise(y, 0.4, features=DIGIT_FEATURES, num_classes=10, seed=1)),
    ]  # fmt: skip
    matrix = random_matrix(10, 2)
    np.save(tmp_path / "m.npy", matrix)
    same.append((apply_noise(f"matrix:{tmp_path / 'm.npy'}", y, num_classes=10, seed=1), matrix_noise(y, matrix, seed=1)))
    for got, expected in same:
        np.testing.assert_array_equal(got.labels, expected.labels)
        assert got.rate > 0
    none = apply_noise("none", y, num_classes=10, seed=0)
    np.testing.assert_array_equal(none.labels, y)
    assert none.rate == 0.0 and not none.is_noisy.any() and none.labels is not y
    np.testing.assert_array_equal(none.transition, np.eye(10))


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan"), 50])
def test_rate_outside_unit_interval_is_refused(rate):
    for generate in (
        lambda: symmetric_noise(DIGIT_LABELS, rate, num_classes=10, seed=0),
        lambda: asymmetric_noise(DIGIT_LABELS, rate, mapping="cifar10", num_classes=10, seed=0),
        lambda: pairflip_noise(DIGIT_LABELS, rate, num_classes=10, seed=0),
        lambda: instance_noise(DIGIT_LABELS, rate, features=DIGIT_FEATURES, num_classes=10, seed=0),
    ):
        with pytest.raises(ValueError, match=r"rate must be a number in \[0, 1\]; got"):
            generate()
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        parse_noise(f"symmetric:{rate}")


def test_percent_rate_gets_a_hint():
    with pytest.raises(ValueError, match="write 0.5 for 50 %"):
        symmetric_noise(DIGIT_LABELS, 50, num_classes=10, seed=0)


@pytest.mark.parametrize(
    "text, message",
    [
        ("symmetric", "missing its argument"),
        ("symmetric:", "missing its argument"),
        ("symmetric:abc", "must be a number"),
        ("foo:0.2", "noise kind must be one of none, symmetric"),
        ("", "noise kind must be one of"),
        ("none:0.2", "takes no argument"),
        ("symmetric:inf", "must be a number"),
        ("matrix:noise.txt", r"\.npy or \.csv"),
        ("cifar10n:best", "aggre, random1, random2, random3, worst"),
        ("cifar100n:worst", "one of noisy"),
        ("cifar10n", "missing its argument"),
    ],
)
def test_malformed_noise_text_is_refused(text, message):
    with pytest.raises(ValueError, match=message):
        parse_noise(text)


def test_unknown_noise_kind_is_refused_everywhere():
    with pytest.raises(ValueError, match="noise kind must be one of"):
        NoiseSpec("gaussian", 0.2)
    with pytest.raises(ValueError, match="noise kind must be one of"):
        apply_noise("gaussian:0.2", DIGIT_LABELS, num_classes=10, seed=0)
    with pytest.raises(TypeError, match="noise must be a string"):
        apply_noise(0.2, DIGIT_LABELS, num_classes=10, seed=0)
    with pytest.raises(ValueError, match="needs a rate"):
        NoiseSpec("symmetric")


@pytest.mark.parametrize("text", ["cifar10n:worst", "cifar100n:noisy"])
def test_apply_noise_refuses_human_label_sets(text):
    with pytest.raises(ValueError, match="casam.data"):
        apply_noise(text, DIGIT_LABELS, num_classes=10, seed=0)


def test_labels_that_do_not_match_the_class_count_are_refused():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\) for num_classes=5; got values from 0 to 9"):
        symmetric_noise(DIGIT_LABELS, 0.2, num_classes=5, seed=0)
    with pytest.raises(ValueError, match="got values from -1"):
        pairflip_noise(np.array([0, -1, 2]), 0.2, num_classes=3, seed=0)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        matrix_noise(np.array([0, 1, 5]), np.eye(3), seed=0)
    with pytest.raises(ValueError, match="labels must lie"):
        apply_noise("none", DIGIT_LABELS, num_classes=9, seed=0)
    with pytest.raises(ValueError, match="num_classes must be an int >= 2; got 1"):
        symmetric_noise([0, 0], 0.2, num_classes=1, seed=0)
    with pytest.raises(ValueError, match="num_classes must be an int"):
        symmetric_noise([0, 1], 0.2, num_classes=2.0, seed=0)
    with pytest.raises(TypeError, match="labels must hold integers; got dtype float64"):
        symmetric_noise(np.array([0.0, 1.0]), 0.2, num_classes=2, seed=0)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        symmetric_noise(np.zeros((2, 2), dtype=int), 0.2, num_classes=2, seed=0)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        symmetric_noise([], 0.2, num_classes=2, seed=0)
    with pytest.raises(ValueError, match="same length"):
        realised_transition([0, 1], [0], num_classes=2)


@pytest.mark.parametrize(
    "matrix, message",
    [
        (np.ones((2, 3)) / 3, r"square \(C, C\) matrix with C >= 2; got shape \(2, 3\)"),
        (np.ones(3) / 3, r"got shape \(3,\)"),
        (np.array([[1.2, -0.2], [0.5, 0.5]]), r"non-negative; entry \[0, 1\] is -0.2"),
        (np.array([[0.9, 0.2], [0.5, 0.5]]), "rows must each sum to 1 .* row 0 sums to 1.1"),
        (np.array([[0.5, 0.5], [0.5, 0.5 - 2e-6]]), "row 1 sums to"),
        (np.array([[np.nan, 1.0], [0.5, 0.5]]), "finite"),
        ([["a", "b"], ["c", "d"]], "numeric"),
    ],
)
def test_bad_matrices_are_refused(matrix, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        matrix_noise([0, 1], matrix, seed=0)
    if isinstance(matrix, np.ndarray) and matrix.ndim == 2:
        np.save(tmp_path / "bad.npy", matrix)
        with pytest.raises(ValueError, match=message):
            load_matrix(tmp_path / "bad.npy")


def test_matrix_of_wrong_size_and_bad_files_are_refused(tmp_path):
    np.save(tmp_path / "three.npy", np.eye(3))
    with pytest.raises(ValueError, match="is 3x3 but num_classes is 10"):
        apply_noise(f"matrix:{tmp_path / 'three.npy'}", DIGIT_LABELS, num_classes=10, seed=0)
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        load_matrix(tmp_path / "missing.npy")
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        apply_noise(f"matrix:{tmp_path / 'missing.csv'}", DIGIT_LABELS, num_classes=10, seed=0)
    (tmp_path / "words.csv").write_text("a,b\nc,d\n")
    with pytest.raises(ValueError, match="could not be read"):
        load_matrix(tmp_path / "words.csv")
    (tmp_path / "ragged.csv").write_text("0.5,0.5\n1.0\n")
    with pytest.raises(ValueError, match="could not be read"):
        load_matrix(tmp_path / "ragged.csv")
    (tmp_path / "trunc.npy").write_bytes((tmp_path / "three.npy").read_bytes()[:100])
    with pytest.raises(ValueError, match="could not be read"):
        load_matrix(tmp_path / "trunc.npy")
    with pytest.raises(ValueError, match=r"\.npy or \.csv"):
        load_matrix(tmp_path / "three.txt")


def test_bad_mappings_features_and_seeds_are_refused():
    with pytest.raises(ValueError, match="mapping must be one of cifar10, cifar100, fashion-mnist"):
        asymmetric_noise(DIGIT_LABELS, 0.2, mapping="digits", num_classes=10, seed=0)
    with pytest.raises(ValueError, match="needs num_classes=100; got 10"):
        asymmetric_noise(DIGIT_LABELS, 0.2, mapping="cifar100", num_classes=10, seed=0)
    with pytest.raises(ValueError, match="different class"):
        asymmetric_noise(DIGIT_LABELS, 0.2, mapping={3: 3}, num_classes=10, seed=0)
    with pytest.raises(ValueError, match=r"ints in \[0, 10\); got 10"):
        asymmetric_noise(DIGIT_LABELS, 0.2, mapping={3: 10}, num_classes=10, seed=0)
    with pytest.raises(ValueError, match="asymmetric noise needs a mapping"):
        apply_noise("asymmetric:0.2", DIGIT_LABELS, num_classes=10, seed=0)
    with pytest.raises(ValueError, match="instance noise needs features"):
        apply_noise("instance:0.2", DIGIT_LABELS, num_classes=10, seed=0)
    with pytest.raises(ValueError, match=r"N=1797 rows .* got shape \(10, 64\)"):
        instance_noise(DIGIT_LABELS, 0.2, features=DIGIT_FEATURES[:10], num_classes=10, seed=0)
    with pytest.raises(ValueError, match="finite"):
        instance_noise(DIGIT_LABELS, 0.2, features=DIGIT_FEATURES * np.nan, num_classes=10, seed=0)
    with pytest.raises(ValueError, match=r"rate_std must be a number in \[0, 1\]; got 2"):
        instance_noise(DIGIT_LABELS, 0.2, features=DIGIT_FEATURES, num_classes=10, seed=0, rate_std=2)
    for seed in (None, 1.5, "0"):
        with pytest.raises(TypeError, match="seed must be a non-negative int or a numpy.random.Generator"):
            symmetric_noise(DIGIT_LABELS, 0.2, num_classes=10, seed=seed)
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        symmetric_noise(DIGIT_LABELS, 0.2, num_classes=10, seed=-1)
    with pytest.raises(TypeError, match="exact must be True or False"):
        symmetric_noise(DIGIT_LABELS, 0.2, num_classes=10, seed=0, exact="yes")
