import math
import re

import pytest
import torch
import torch.nn.functional as F

from casam.losses import LOSSES, PUBLISHED, APLLoss, CELoss, ELRLoss, GCELoss, NoisyLabelLoss, SCELoss, build_loss

# Logits chosen so that the softmax is exactly the probabilities below (log of a distribution).
P = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]], dtype=torch.float64)
Y = torch.tensor([0, 2])
PY = torch.tensor([0.5, 0.3], dtype=torch.float64)
ONEHOT = F.one_hot(Y, 3).double()


def _logits():
    return P.log().clone().requires_grad_(True)


def _grad(loss_fn, *args):
    """Per-sample gradients w.r.t. logits: the loss of sample i depends only on row i, so grad of the sum."""
    z = _logits()
    out = loss_fn(z, Y, *args)
    (g,) = torch.autograd.grad(out.sum(), z)
    return out.detach(), g


def test_ce_value_and_gradient_by_hand():
    out, g = _grad(CELoss())
    assert torch.allclose(out, -PY.log())
    # dCE/dz = p - onehot(y)
    assert torch.allclose(g, P - ONEHOT)


def test_gce_value_and_gradient_by_hand():
    out, g = _grad(GCELoss(q=0.5))
    # (1 - sqrt(0.5)) / 0.5 = 2 - sqrt(2); (1 - sqrt(0.3)) / 0.5
    assert torch.allclose(out, torch.tensor([2 - math.sqrt(2), 2 * (1 - math.sqrt(0.3))], dtype=torch.float64))
    # dL/dz = p_y^q (p - onehot(y))
    assert torch.allclose(g, PY.sqrt()[:, None] * (P - ONEHOT))


def test_gce_tends_to_ce_as_q_goes_to_zero_and_is_one_minus_py_at_q_one():
    z = torch.randn(8, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
    y = torch.arange(8) % 5
    ce = F.cross_entropy(z, y, reduction="none")
    gce_small = GCELoss(q=1e-4)(z, y)
    assert torch.allclose(gce_small, ce, rtol=2e-3)
    assert not torch.allclose(GCELoss(q=0.7)(z, y), ce, rtol=2e-3)  # the comparison can fail
    assert torch.allclose(GCELoss(q=1.0)(z, y), 1 - z.softmax(1)[torch.arange(8), y])


def test_sce_value_and_reverse_term_with_clipped_log():
    out, g = _grad(SCELoss(alpha=0.1, beta=1.0))
    # RCE = -sum_k p_k log(clip(onehot)) = -A (1 - p_y) with A = -4
    rce = 4 * (1 - PY)
    assert torch.allclose(out, 0.1 * -PY.log() + rce)
    # d(4 (1 - p_y))/dz_j = -4 p_y (delta_jy - p_j)
    assert torch.allclose(g, 0.1 * (P - ONEHOT) - 4 * PY[:, None] * (ONEHOT - P))
    # the reverse term alone, and the reference code's clip ln(1e-4)
    assert torch.allclose(SCELoss(alpha=0, beta=1)(P.log(), Y), rce)
    code = SCELoss(alpha=0, beta=1, log_zero=math.log(1e-4))(P.log(), Y)
    assert torch.allclose(code, -(P * ONEHOT.clamp(1e-4, 1).log()).sum(1))


def test_apl_value_gradient_and_nce_range():
    out, g = _grad(APLLoss(alpha=1.0, beta=1.0))
    a = -PY.log()
    s = -P.log().sum(1)
    assert torch.allclose(out, a / s + 4 * (1 - PY))
    # NCE = a / S with da/dz_j = p_j - delta_jy, dS/dz_j = C p_j - 1 (C = 3)
    da, ds = P - ONEHOT, 3 * P - 1
    dnce = (da * s[:, None] - a[:, None] * ds) / s[:, None] ** 2
    assert torch.allclose(g, dnce - 4 * PY[:, None] * (ONEHOT - P))
    z = torch.randn(64, 10, generator=torch.Generator().manual_seed(1)) * 5
    y = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(2))
    nce = APLLoss(alpha=1.0, beta=0.0)(z, y)
    assert (nce >= 0).all() and (nce <= 1).all() and nce.min() < 0.1 and nce.max() > 0.2


def test_elr_target_update_two_observe_calls_by_hand():
    loss = ELRLoss(num_samples=4, num_classes=3, beta=0.7, lam=3.0)
    idx = torch.tensor([2, 0])
    loss.observe(P.log().float(), idx)
    # zero-initialised targets: t = 0.7 * 0 + 0.3 * p (p within [1e-4, 1 - 1e-4], already normalised)
    expected = torch.zeros(4, 3)
    expected[2], expected[0] = 0.3 * P[0].float(), 0.3 * P[1].float()
    assert torch.allclose(loss.targets, expected)
    p2 = torch.tensor([[0.2, 0.2, 0.6]])
    loss.observe(p2.log(), torch.tensor([2]))
    expected[2] = 0.7 * (0.3 * P[0].float()) + 0.3 * p2[0]
    assert torch.allclose(loss.targets, expected)


def test_elr_observe_clamps_and_renormalises():
    loss = ELRLoss(num_samples=1, num_classes=3, beta=0.0, lam=3.0)
    loss.observe(torch.tensor([[0.0, -30.0, -30.0]]), torch.tensor([0]))
    # p ~ (1, 9e-14, 9e-14) -> clamped (1 - 1e-4, 1e-4, 1e-4) -> divided by its sum 1 + 1e-4
    assert torch.allclose(loss.targets[0], torch.tensor([1 - 1e-4, 1e-4, 1e-4]) / (1 + 1e-4))


def test_elr_forward_value_gradient_and_no_state_change():
    loss = ELRLoss(num_samples=3, num_classes=3, beta=0.7, lam=3.0).double()
    t = torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]], dtype=torch.float64)
    loss.targets[torch.tensor([1, 2])] = t
    before = loss.state_dict()["targets"].clone()
    z = _logits()
    out = loss(z, Y, torch.tensor([1, 2]))
    (g,) = torch.autograd.grad(out.sum(), z)
    assert torch.equal(loss.targets, before)  # forward is pure
    tp = (t * P).sum(1)  # <t, p>
    assert torch.allclose(out.detach(), -PY.log() + 3 * torch.log(1 - tp))
    # d log(1 - <t,p>)/dz_j = -p_j (t_j - <t,p>) / (1 - <t,p>)
    assert torch.allclose(g, P - ONEHOT - 3 * P * (t - tp[:, None]) / (1 - tp[:, None]))


def test_elr_zero_targets_reduce_to_ce_and_state_dict_round_trip():
    z = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3, 0])
    idx = torch.tensor([4, 3, 2, 1, 0])
    loss = build_loss("elr", num_samples=6, num_classes=4)
    assert torch.allclose(loss(z, y, idx), F.cross_entropy(z, y, reduction="none"))
    loss.observe(z, idx)
    other = build_loss("elr", num_samples=6, num_classes=4)
    other.load_state_dict(loss.state_dict())
    assert torch.equal(other.targets, loss.targets) and other.targets[5].abs().sum() == 0
    assert torch.allclose(other(z, y, idx), loss(z, y, idx))
    assert not torch.allclose(loss(z, y, idx), F.cross_entropy(z, y, reduction="none"))


def test_stateless_losses_have_empty_state_and_ignore_observe():
    z, y = P.log(), Y
    for name in ("ce", "gce", "sce", "apl"):
        loss = build_loss(name, num_samples=10, num_classes=3)
        before = loss(z, y)
        loss.observe(z, torch.tensor([0, 1]))
        assert loss.state_dict() == {} and torch.equal(loss(z, y), before)


def test_build_loss_defaults_presets_and_overrides():
    assert set(LOSSES) == set(PUBLISHED)
    assert isinstance(build_loss("ce", num_samples=1, num_classes=3), CELoss)
    assert build_loss("gce", num_samples=1, num_classes=3).q == 0.7
    sce = build_loss("sce", num_samples=1, num_classes=3)
    assert (sce.alpha, sce.beta, sce.log_zero) == (0.1, 1.0, -4.0)
    sce100 = build_loss("sce", num_samples=1, num_classes=3, preset="cifar100")
    assert (sce100.alpha, sce100.beta) == (6.0, 0.1)
    apl100 = build_loss("apl", num_samples=1, num_classes=3, preset="cifar100", beta=0.5)
    assert (apl100.alpha, apl100.beta) == (10.0, 0.5)
    elr = build_loss("elr", num_samples=7, num_classes=3)
    assert (elr.beta, elr.lam, tuple(elr.targets.shape)) == (0.7, 3.0, (7, 3))
    elr100 = build_loss("elr", num_samples=7, num_classes=3, preset="cifar100")
    assert (elr100.beta, elr100.lam) == (0.9, 7.0)
    for name in LOSSES:
        loss = build_loss(name, num_samples=2, num_classes=3)
        assert isinstance(loss, NoisyLabelLoss)
        assert loss(P.log(), Y, torch.tensor([0, 1])).shape == (2,)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: GCELoss(q=0.0), "q must be in (0, 1]"),
        (lambda: GCELoss(q=1.5), "q must be in (0, 1]"),
        (lambda: SCELoss(alpha=-0.1), "alpha must be a finite number >= 0"),
        (lambda: SCELoss(alpha=0, beta=0), "cannot both be 0"),
        (lambda: SCELoss(log_zero=0.0), "log_zero"),
        (lambda: APLLoss(beta=-1.0), "beta must be a finite number >= 0"),
        (lambda: ELRLoss(num_samples=4, num_classes=3, lam=-3.0), "lam must be a finite number >= 0"),
        (lambda: ELRLoss(num_samples=4, num_classes=3, beta=1.0), "beta must be in [0, 1)"),
        (lambda: ELRLoss(num_samples=4, num_classes=3, beta=-0.1), "beta must be in [0, 1)"),
        (lambda: ELRLoss(num_samples=0, num_classes=3), "num_samples must be an integer >= 1"),
        (lambda: build_loss("mae", num_samples=4, num_classes=3), "unknown loss 'mae'; allowed: ce, gce, sce, apl, elr"),
        (lambda: build_loss("sce", num_samples=4, num_classes=3, q=0.7), "option 'q' is not accepted by loss 'sce'"),
        (lambda: build_loss("ce", num_samples=4, num_classes=3, preset="mnist"), "unknown preset 'mnist'"),
    ],
)
def test_bad_hyperparameters_are_refused(make, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


def test_bad_call_inputs_are_refused():
    elr = ELRLoss(num_samples=4, num_classes=3)
    with pytest.raises(ValueError, match="ELR needs the samples' dataset indices"):
        elr(P.log(), Y)
    with pytest.raises(ValueError, match="ELR needs the samples' dataset indices"):
        elr.observe(P.log(), None)
    with pytest.raises(ValueError, match="indices must be an int64 tensor of shape"):
        elr(P.log(), Y, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="targets must be an int64 tensor"):
        GCELoss()(P.log(), Y[:1])
    with pytest.raises(ValueError, match="logits must be a 2-D tensor"):
        CELoss()(P[0].log(), Y[:1])
    with pytest.raises(ValueError, match="built for num_classes=4"):
        build_loss("sce", num_samples=4, num_classes=4)(P.log(), Y)
