import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from casam.selection import (
    CoTeachingSelector,
    coteaching_select,
    estimate_noise_rate,
    forget_rate_schedule,
    small_loss_indices,
)

LOSSES = torch.tensor([0.9, 0.1, 0.5, 0.1, 2.0, 0.3, 0.7, 1.5, 0.2, 0.4])


def test_small_loss_indices_by_hand_with_stable_ties():
    # sorted: 0.1 (1), 0.1 (3), 0.2 (8), 0.3 (5), 0.4 (9), 0.5 (2), 0.7 (6), 0.9 (0), 1.5 (7), 2.0 (4)
    assert small_loss_indices(LOSSES, keep_ratio=0.5).tolist() == [1, 3, 8, 5, 9]
    assert small_loss_indices(LOSSES, keep_ratio=0.7).tolist() == [1, 3, 8, 5, 9, 2, 6]  # 0.7 * 10 = 7
    assert small_loss_indices(LOSSES, keep_ratio=0.29).tolist() == [1, 3]  # floor(2.9) = 2
    assert small_loss_indices(LOSSES, keep_ratio=1.0).tolist() == [1, 3, 8, 5, 9, 2, 6, 0, 7, 4]
    assert small_loss_indices(LOSSES, keep_ratio=0.01).tolist() == [1]  # at least one sample
    assert small_loss_indices(torch.tensor([0.3] * 4), keep_ratio=0.5).tolist() == [0, 1]
    assert small_loss_indices(torch.zeros(0), keep_ratio=0.5).tolist() == []
    # float noise: 1 - 0.7 = 0.30000000000000004 and 0.29 * 100 = 28.999999999999996
    assert len(small_loss_indices(torch.rand(10), keep_ratio=1 - 0.7)) == 3
    assert len(small_loss_indices(torch.rand(100), keep_ratio=0.29)) == 29


def test_coteaching_exchanges_small_loss_samples():
    losses_b = torch.tensor([0.8, 0.05, 0.6, 0.3, 0.2, 0.9, 0.1, 0.4, 0.7, 0.5])
    idx_for_a, idx_for_b = coteaching_select(LOSSES, losses_b, forget_rate=0.4)
    assert idx_for_a.tolist() == [1, 6, 4, 3, 7, 9]  # B's six smallest go to A
    assert idx_for_b.tolist() == [1, 3, 8, 5, 9, 2]  # A's six smallest go to B
    assert idx_for_a.dtype == torch.long
    a, b = coteaching_select(LOSSES, losses_b, forget_rate=0.0)
    assert sorted(a.tolist()) == sorted(b.tolist()) == list(range(10))


def test_forget_rate_schedule_values():
    values = [forget_rate_schedule(t, forget_rate=0.4) for t in (0, 1, 5, 9, 10, 11, 200)]
    assert values == pytest.approx([0.0, 0.04, 0.2, 0.36, 0.4, 0.4, 0.4])
    assert forget_rate_schedule(5, forget_rate=0.5, num_gradual=5) == 0.5
    assert forget_rate_schedule(5, forget_rate=0.4, num_gradual=10, exponent=2.0) == pytest.approx(0.1)
    assert forget_rate_schedule(5, forget_rate=0.4, num_gradual=10, exponent=0.5) == pytest.approx(0.4 * 0.5**0.5)


def test_estimate_noise_rate_on_synthetic_two_mode_losses():
    rng = np.random.default_rng(0)
    n = 5000
    high = rng.random(n) < 0.3
    losses = np.where(high, rng.normal(2.5, 0.6, n), np.abs(rng.normal(0.0, 0.3, n)))
    estimate = estimate_noise_rate(torch.tensor(losses), seed=0)
    assert abs(estimate - high.mean()) < 0.03
    assert estimate == estimate_noise_rate(losses, seed=0)  # tensor or array, seeded
    assert estimate_noise_rate(np.full(10, 0.7)) == 0.0  # constant losses: no evidence of noise
    # almost everything high: clipped to 0.9
    many = np.where(rng.random(n) < 0.97, rng.normal(3.0, 0.2, n), rng.normal(0.0, 0.05, n))
    assert estimate_noise_rate(many) == 0.9


def test_estimate_noise_rate_on_digits_with_40_percent_symmetric_noise():
    """Real data: logistic regression on scikit-learn digits with 40 % of the labels flipped to a
    different class uniformly at random; losses of the whole training set after 10 epochs."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    flipped = rng.random(len(y)) < 0.4
    noisy_y = np.where(flipped, (y + rng.integers(1, 10, len(y))) % 10, y)
    inputs, targets = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(noisy_y)
    gen = torch.Generator().manual_seed(0)
    model = torch.nn.Linear(64, 10)
    with torch.no_grad():
        model.weight.copy_(torch.randn(10, 64, generator=gen) * 0.05)
        model.bias.zero_()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(10):
        for batch in torch.randperm(len(targets), generator=gen).split(64):
            opt.zero_grad()
            F.cross_entropy(model(inputs[batch]), targets[batch]).backward()
            opt.step()
    with torch.no_grad():
        losses = F.cross_entropy(model(inputs), targets, reduction="none")
    true_rate = flipped.mean()
    assert abs(true_rate - 0.4) < 0.02
    estimate = estimate_noise_rate(losses, seed=0)
    assert abs(estimate - true_rate) < 0.1
    # and the selector built on the estimate keeps mostly clean samples at full forget rate
    selector = CoTeachingSelector()
    assert selector.estimate(losses) == estimate
    kept, _ = selector.select(losses, losses, epoch=10)
    assert (~torch.tensor(flipped)[kept]).double().mean() > 0.9


def test_selector_rate_select_and_state():
    selector = CoTeachingSelector(forget_rate=0.4)
    assert selector.rate(0) == 0.0 and selector.rate(5) == pytest.approx(0.2) and selector.rate(30) == pytest.approx(0.4)
    idx_for_a, idx_for_b = selector.select(LOSSES, LOSSES.flip(0), epoch=10)
    assert idx_for_b.tolist() == [1, 3, 8, 5, 9, 2]
    assert idx_for_a.tolist() == [6, 8, 1, 4, 0, 7]  # flipped positions of the same values
    unknown = CoTeachingSelector(num_gradual=5)
    assert unknown.rate(0) == 0.0
    with pytest.raises(RuntimeError, match="forget rate is not known yet"):
        unknown.rate(1)
    restored = CoTeachingSelector()
    restored.load_state_dict(selector.state_dict())
    assert restored.state_dict() == {"forget_rate": 0.4, "estimated": False, "num_gradual": 10, "exponent": 1.0}


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: forget_rate_schedule(3, forget_rate=1.0), "forget_rate must be in [0, 1), got 1.0."),
        (lambda: forget_rate_schedule(3, forget_rate=-0.1), "forget_rate must be in [0, 1)"),
        (lambda: forget_rate_schedule(-1, forget_rate=0.2), "epoch must be an integer >= 0"),
        (lambda: forget_rate_schedule(1, forget_rate=0.2, num_gradual=0), "num_gradual must be an integer >= 1"),
        (lambda: forget_rate_schedule(1, forget_rate=0.2, exponent=0), "exponent must be a finite number > 0"),
        (lambda: small_loss_indices(LOSSES, keep_ratio=0.0), "keep_ratio must be in (0, 1]"),
        (lambda: small_loss_indices(LOSSES[None], keep_ratio=0.5), "losses must be a 1-D floating-point tensor"),
        (lambda: coteaching_select(LOSSES, LOSSES[:5], forget_rate=0.2), "must have the same shape"),
        (lambda: coteaching_select(LOSSES, LOSSES, forget_rate=1.2), "forget_rate must be in [0, 1)"),
        (lambda: estimate_noise_rate([1.0]), "at least 2 per-sample losses"),
        (lambda: estimate_noise_rate([1.0, float("nan")]), "losses must all be finite"),
        (lambda: CoTeachingSelector(forget_rate=1.0), "forget_rate must be in [0, 1)"),
        (lambda: CoTeachingSelector(exponent=-1.0), "exponent must be a finite number > 0"),
        (lambda: CoTeachingSelector(num_gradual=2.5), "num_gradual must be an integer >= 1"),
    ],
)
def test_bad_inputs_are_refused(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()
