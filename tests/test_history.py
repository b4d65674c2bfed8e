import pytest
import torch
import torch.nn.functional as F

from casam.history import CRITERIA, SampleHistory


def set_history(history, probs, labels, losses=None):
    """Write hand-made softmax outputs (and losses) as one first visit of samples 0..n-1."""
    probs = torch.as_tensor(probs, dtype=torch.float64)
    idx = torch.arange(len(probs))
    history.update(idx, probs.log(), torch.as_tensor(labels), None if losses is None else torch.as_tensor(losses, dtype=torch.float32))


def test_first_visit_sets_then_ema_blends():
    h = SampleHistory(5, 3, beta=0.75, debias=False)
    idx, y = torch.tensor([3, 1]), torch.tensor([0, 2])
    l1, l2 = torch.tensor([[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]]), torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    h.update(idx, l1, y, torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(h.probs[idx], torch.softmax(l1, 1))
    h.update(idx, l2, y, torch.tensor([3.0, 6.0]))
    torch.testing.assert_close(h.probs[idx], 0.75 * torch.softmax(l1, 1) + 0.25 * torch.softmax(l2, 1))
    torch.testing.assert_close(h.losses[idx], torch.tensor([0.75 * 1 + 0.25 * 3, 0.75 * 2 + 0.25 * 6]))
    assert h.counts.tolist() == [0, 2, 0, 2, 0] and h.labels[idx].tolist() == [0, 2]
    assert h.probs[[0, 2, 4]].abs().sum() == 0  # untouched rows stay empty


def test_debiased_mean_weighs_the_latest_visit_most():
    h = SampleHistory(5, 3, beta=0.9)
    idx, y = torch.tensor([3, 1]), torch.tensor([0, 2])
    outs = [torch.randn(2, 3, generator=torch.Generator().manual_seed(k)) for k in range(3)]
    for k, logits in enumerate(outs):
        h.update(idx, logits, y, torch.full((2,), float(k)))
    weights = torch.tensor([0.81, 0.9, 1.0]) / 2.71  # beta^(n-k), normalised
    expected = sum(w * torch.softmax(o, 1) for w, o in zip(weights, outs))
    torch.testing.assert_close(h.mean_probs(idx), expected)
    torch.testing.assert_close(h.mean_losses(idx), torch.full((2,), float(weights @ torch.tensor([0.0, 1.0, 2.0]))))
    torch.testing.assert_close(h.mean_probs(idx).sum(1), torch.ones(2))  # a distribution at every visit count
    assert h.predictions(idx).tolist() == expected.argmax(1).tolist()
    assert h.mean_probs(torch.tensor([0])).abs().sum() == 0  # never visited
    # the first-visit rule would give the first output 0.81 of the weight instead of 0.30
    old = SampleHistory(5, 3, beta=0.9, debias=False)
    for logits in outs:
        old.update(idx, logits, y)
    torch.testing.assert_close(old.mean_probs(idx), 0.81 * torch.softmax(outs[0], 1) + 0.09 * torch.softmax(outs[1], 1) + 0.1 * torch.softmax(outs[2], 1))


def test_loss_defaults_to_cross_entropy_of_the_logits():
    h = SampleHistory(4, 3)
    logits, y = torch.tensor([[1.0, 2.0, 0.5], [0.0, 0.0, 4.0]]), torch.tensor([1, 0])
    h.update(torch.tensor([0, 2]), logits, y)
    torch.testing.assert_close(h.mean_losses(torch.tensor([0, 2])), F.cross_entropy(logits, y, reduction="none"))


def test_agreement_and_confidence_on_a_hand_made_history():
    probs = [[0.7, 0.2, 0.1], [0.4, 0.35, 0.25], [0.1, 0.1, 0.8], [0.3, 0.6, 0.1]]
    labels = [0, 1, 2, 0]
    agreement = SampleHistory(6, 3, criterion="agreement")
    confidence = SampleHistory(6, 3, criterion="confidence", tau=0.5)
    for h in (agreement, confidence):
        set_history(h, probs, labels)
    batch, y = torch.tensor([0, 1, 2, 3, 4]), torch.tensor([0, 1, 2, 0, 1])
    # sample 4 was never visited: counted clean
    assert agreement.clean_mask(batch, y).tolist() == [True, False, True, False, True]
    assert confidence.clean_mask(batch, y).tolist() == [True, False, True, False, True]
    # the label asked about is the one passed in: sample 1 agrees with label 0
    assert agreement.clean_mask(torch.tensor([1]), torch.tensor([0])).tolist() == [True]
    assert SampleHistory(6, 3, criterion="confidence", tau=0.65).clean_mask(batch, y).all()  # empty history: all clean
    strict = SampleHistory(6, 3, criterion="confidence", tau=0.75)
    set_history(strict, probs, labels)
    assert strict.clean_mask(batch, y).tolist() == [False, False, True, False, True]


def test_class_thresholds_hold_each_class_to_its_own_average_self_confidence():
    # class 2 is the hard one: its clean samples 4 and 7 are not argmax-agreeing, sample 1 is a class-1
    # image labelled 0 that reaches class 1's bar
    probs = [[0.9, 0.05, 0.05], [0.05, 0.92, 0.03], [0.05, 0.9, 0.05], [0.05, 0.9, 0.05],
             [0.52, 0.01, 0.47], [0.3, 0.1, 0.6], [0.95, 0.03, 0.02], [0.6, 0.1, 0.3]]
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 2])
    h, agreement = SampleHistory(9, 3, criterion="class-thresholds"), SampleHistory(9, 3)
    for history in (h, agreement):
        set_history(history, probs, labels)
    batch, y = torch.arange(9), torch.cat([labels, torch.tensor([1])])
    assert h.clean_mask(batch, y).all()  # no thresholds before the first refresh: no evidence yet
    h.refresh()
    torch.testing.assert_close(h.thresholds, torch.tensor([(0.9 + 0.05 + 0.95) / 3, 0.9, (0.47 + 0.6 + 0.3) / 3]))
    # sample 7 reaches no bar (no evidence: clean), sample 4 only its own; sample 8 never visited
    assert h.clean_mask(batch, y).tolist() == [True, False, True, True, True, True, True, True, True]
    assert agreement.clean_mask(batch, y).tolist() == [True, False, True, True, False, True, True, False, True]
    agreement.refresh()
    assert h.noise_rate == agreement.noise_rate == pytest.approx(3 / 8)  # the switch's estimate stays agreement's
    # the suggested label is the class that reached its bar (sample 1: class 1), argmax where none did (7)
    assert h.suggested_labels(batch[:8]).tolist() == [0, 1, 1, 1, 2, 2, 0, 0]
    assert agreement.suggested_labels(batch[:8]).tolist() == h.predictions(batch[:8]).tolist() == [0, 1, 1, 1, 0, 2, 0, 0]
    other = SampleHistory(9, 3, criterion="class-thresholds")
    other.load_state_dict(h.state_dict())
    assert torch.equal(other.thresholds, h.thresholds) and torch.equal(other.clean_mask(batch, y), h.clean_mask(batch, y))


def test_two_speed_memory_catches_a_memorised_label_for_longer():
    # sample 0 is labelled 1 but the network says class 0 for six visits, then memorises label 1
    said = [[0.8, 0.2]] * 6 + [[0.1, 0.9]] * 20
    one = SampleHistory(2, 2, beta=0.5)
    two = SampleHistory(2, 2, beta=0.5, slow_beta=0.9)
    verdicts = {"one": [], "two": []}
    for probs in said:
        for name, h in (("one", one), ("two", two)):
            set_history(h, [probs, [0.2, 0.8]], [1, 1])
            verdicts[name].append(h.clean_mask(torch.tensor([0, 1]), torch.tensor([1, 1])).tolist())
    fast = [v[0] for v in verdicts["one"]]
    slow = [v[0] for v in verdicts["two"]]
    # the fast memory (beta 0.5) agrees at the first memorised visit, the two-speed one at the third:
    # the slow EMA (0.9) needs 0.9^k (0.8 - 0.2)(1 - 0.9^6) < (0.9 - 0.1)(1 - 0.9^k), k = 3
    assert fast.index(True) == 6 and slow.index(True) == 8, (fast, slow)
    slow_ema = torch.zeros(2)
    for n, probs in enumerate(said):
        slow_ema = 0.9 * slow_ema + 0.1 * torch.tensor(probs)
        assert slow[n] == (bool(slow_ema[1] > slow_ema[0]) and fast[n]), n
    assert all(v[1] for v in verdicts["one"] + verdicts["two"])  # an always-agreeing sample stays clean
    assert all(slow[-5:]) and two.predictions(torch.tensor([0])).item() == 1  # suggestions: the fast memory's
    # the state carries the slow memory, and a state saved without one cannot feed a two-speed history
    other = SampleHistory(2, 2, beta=0.5, slow_beta=0.9)
    other.load_state_dict(two.state_dict())
    assert torch.equal(other.slow_probs, two.slow_probs)
    with pytest.raises(ValueError, match="saved without slow_beta"):
        other.load_state_dict(one.state_dict())
    assert two.memory_bytes == one.memory_bytes + 2 * 2 * 4
    for bad in (0.5, 0.3, 1.0):
        with pytest.raises(ValueError, match=r"slow_beta must be None or in \(beta, 1\)"):
            SampleHistory(2, 2, beta=0.5, slow_beta=bad)
    with pytest.raises(ValueError, match="criterion 'agreement' only"):
        SampleHistory(2, 2, criterion="confidence", slow_beta=0.97)


def test_small_loss_per_class_with_given_fraction():
    h = SampleHistory(10, 2, criterion="small-loss", clean_fraction=0.5)
    labels = [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    losses = [0.9, 0.1, 0.5, 0.3, 5.0, 4.0, 6.0, 7.0, 0.2, 8.0]  # class 1 is harder overall: per-class quota matters
    set_history(h, torch.full((10, 2), 0.5), labels, losses)
    everyone = torch.arange(10), torch.tensor(labels)
    assert h.clean_mask(*everyone).all()  # before the first refresh
    h.refresh()
    # class 0: 2 of 4 lowest (0.1, 0.3); class 1: 3 of 6 lowest (0.2, 4.0, 5.0)
    assert h.clean_mask(*everyone).tolist() == [False, True, False, True, True, True, False, False, True, False]
    assert not h.stale


def test_small_loss_estimates_its_fraction_from_agreement():
    h = SampleHistory(8, 2, criterion="small-loss")
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    probs = [[0.9, 0.1]] * 3 + [[0.2, 0.8]] + [[0.1, 0.9]] * 3 + [[0.6, 0.4]]  # 6 of 8 agree: r = 0.75
    losses = [0.1, 0.2, 0.3, 2.0, 0.1, 0.2, 0.3, 1.0]
    set_history(h, probs, labels, losses)
    h.refresh()
    assert h.noise_rate == pytest.approx(0.25)
    assert h.clean_mask(torch.arange(8), torch.tensor(labels)).tolist() == [True] * 3 + [False] + [True] * 3 + [False]


def test_small_loss_edge_fractions():
    for fraction, expected in ((1.0, True), (0.0, False)):
        h = SampleHistory(4, 2, criterion="small-loss", clean_fraction=fraction)
        set_history(h, torch.full((4, 2), 0.5), [0, 1, 0, 1], [1.0, 2.0, 3.0, 4.0])
        h.refresh()
        assert h.clean_mask(torch.arange(4), torch.tensor([0, 1, 0, 1])).tolist() == [expected] * 4


def test_gmm_separates_two_loss_modes():
    gen = torch.Generator().manual_seed(0)
    n = 400
    noisy = torch.zeros(n, dtype=torch.bool)
    noisy[torch.randperm(n, generator=gen)[:120]] = True  # 30 % high-loss samples
    losses = torch.where(noisy, 3.0 + 0.4 * torch.randn(n, generator=gen), 0.3 + 0.15 * torch.randn(n, generator=gen)).abs()
    labels = torch.randint(0, 10, (n,), generator=gen)
    h = SampleHistory(n + 5, 10, criterion="gmm")
    h.update(torch.arange(n), torch.zeros(n, 10), labels, losses)
    h.refresh()
    clean = h.clean_mask(torch.arange(n + 5), torch.cat([labels, torch.zeros(5, dtype=torch.int64)]))
    assert torch.equal(clean[:n], ~noisy) and clean[n:].all()  # unvisited: clean
    assert h.noise_rate == pytest.approx(0.3, abs=0.02)


def test_gmm_with_identical_losses_keeps_everyone():
    h = SampleHistory(6, 2, criterion="gmm")
    h.update(torch.arange(6), torch.zeros(6, 2), torch.zeros(6, dtype=torch.int64), torch.full((6,), 0.7))
    h.refresh()
    assert h.clean_mask(torch.arange(6), torch.zeros(6, dtype=torch.int64)).all()


def test_empty_history_and_empty_batch():
    for criterion in CRITERIA:
        h = SampleHistory(5, 3, criterion=criterion)
        h.refresh()  # nothing visited: no estimate, everyone clean
        assert h.noise_rate is None
        assert h.clean_mask(torch.arange(5), torch.tensor([0, 1, 2, 0, 1])).all()
        empty = h.clean_mask(torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64))
        assert empty.shape == (0,) and empty.dtype == torch.bool
        h.update(torch.zeros(0, dtype=torch.int64), torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64))
        assert h.counts.sum() == 0


def test_all_clean_history():
    probs = torch.eye(3).repeat(2, 1) * 0.9 + 0.1 / 3
    labels = [0, 1, 2, 0, 1, 2]
    for criterion in CRITERIA:
        h = SampleHistory(6, 3, criterion=criterion)
        set_history(h, probs, labels, [0.1] * 6)
        h.refresh()
        assert h.clean_mask(torch.arange(6), torch.tensor(labels)).all(), criterion
        assert h.noise_rate == 0.0


def test_state_dict_round_trip_and_float16_storage():
    h = SampleHistory(50, 4, dtype=torch.float16, criterion="small-loss", clean_fraction=0.5)
    gen = torch.Generator().manual_seed(1)
    logits, labels = torch.randn(50, 4, generator=gen), torch.randint(0, 4, (50,), generator=gen)
    h.update(torch.arange(50), logits, labels)
    torch.testing.assert_close(h.mean_probs(torch.arange(50)), torch.softmax(logits, 1), atol=1e-3, rtol=1e-3)
    h.refresh()
    other = SampleHistory(50, 4, dtype=torch.float16, criterion="small-loss", clean_fraction=0.5)
    other.load_state_dict(h.state_dict())
    for name in ("probs", "losses", "counts", "labels", "flags"):
        assert torch.equal(getattr(other, name), getattr(h, name)), name
    assert other.noise_rate == h.noise_rate
    with pytest.raises(ValueError, match=r"needs \(60, 4\)"):
        SampleHistory(60, 4).load_state_dict(h.state_dict())
    with pytest.raises(ValueError, match="missing"):
        other.load_state_dict({"probs": h.probs})


def test_memory_figures():
    # the docstring's figure for CIFAR-100: 50,000 x 100 x 4 B = 20 MB for h, + 17 B per sample
    assert SampleHistory(50_000, 100).memory_bytes == 50_000 * 100 * 4 + 50_000 * 17
    assert SampleHistory(50_000, 100, dtype=torch.float16).memory_bytes == 50_000 * 100 * 2 + 50_000 * 17


def test_bad_input():
    with pytest.raises(ValueError, match="unknown criterion 'loss'"):
        SampleHistory(10, 3, criterion="loss")
    for beta in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="beta must be in"):
            SampleHistory(10, 3, beta=beta)
    with pytest.raises(ValueError, match="num_classes"):
        SampleHistory(10, 1)
    with pytest.raises(ValueError, match="clean_fraction"):
        SampleHistory(10, 3, clean_fraction=1.5)
    with pytest.raises(ValueError, match="dtype"):
        SampleHistory(10, 3, dtype=torch.int32)
    h = SampleHistory(10, 3)
    logits = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"indices must be in \[0, 10\), got 10"):
        h.update(torch.tensor([1, 10]), logits, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"indices must be in \[0, 10\), got -1"):
        h.clean_mask(torch.tensor([-1, 2]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\), got 3"):
        h.update(torch.tensor([1, 2]), logits, torch.tensor([0, 3]))
    with pytest.raises(TypeError, match="integer tensor"):
        h.update(torch.tensor([1.0, 2.0]), logits, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"logits must have shape \(2, 3\)"):
        h.update(torch.tensor([1, 2]), torch.zeros(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="same length"):
        h.clean_mask(torch.tensor([1, 2]), torch.tensor([0]))
    assert h.counts.sum() == 0  # nothing was written by the refused calls
