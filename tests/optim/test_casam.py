import copy
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from casam.history import SampleHistory
from casam.optim import CASAM, SAM, frozen_bn_stats

NOISY = [1, 4, 5, 8, 10]  # samples the hand-made history believes mislabelled


def believed_history(tiny, *, criterion="agreement"):
    """History whose every sample was seen once predicting class b_i: b_i = y_i except for NOISY."""
    believed = tiny.y.clone()
    believed[NOISY] = (believed[NOISY] + 1) % 3
    history = SampleHistory(len(tiny.y), 3, beta=0.9, criterion=criterion)
    history.update(tiny.idx, 10.0 * F.one_hot(believed, 3).double(), tiny.y)
    clean = torch.ones(len(tiny.y), dtype=torch.bool)
    clean[NOISY] = False
    return history, clean


def casam_step(opt, tiny, model):
    clean = opt.first_step(tiny.losses(model), logits=model(tiny.x), indices=tiny.idx, labels=tiny.y)
    loss = opt.second_step(tiny.losses(model))
    return clean, loss


def make(model, history, **kw):
    options = dict(rho=0.3, lr=0.5, warmup_epochs=0, min_clean=1)
    options.update(kw)
    return CASAM(model.parameters(), torch.optim.SGD, history=history, **options)


def first_step_at(opt, tiny, model):
    """CASAM.first_step on the whole tiny batch at the model's current weights; returns the mask."""
    logits = model(tiny.x)
    return opt.first_step(F.cross_entropy(logits, tiny.y, reduction="none"), logits=logits, indices=tiny.idx, labels=tiny.y)


def assert_moved_along(model, w, g, rho, *, rtol=1e-12, atol=1e-14):
    """The model's weights are w + rho g / ||g|| (one norm over every parameter)."""
    norm = math.sqrt(sum(float((v**2).sum()) for v in g.values()))
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), w[name] + rho * g[name] / norm, rtol=rtol, atol=atol)


def test_one_step_equals_the_formula(tiny):
    rho, lr, lam = 0.3, 0.5, 0.3
    model = tiny.model()
    history, clean = believed_history(tiny)
    w = tiny.weights(model)
    g_clean = tiny.grad(model, w, subset=clean)
    norm = math.sqrt(sum(float((v**2).sum()) for v in g_clean.values()))
    w_adv = {k: w[k] + rho * g_clean[k] / norm for k in w}
    a = torch.where(clean, 1.0, torch.tensor(lam, dtype=torch.float64))
    g = tiny.grad(model, w_adv, sample_weights=a)
    expected = {k: w[k] - lr * g[k] for k in w}

    opt = make(model, history, rho=rho, lr=lr, noisy_weight=lam)
    logits = model(tiny.x)
    mask = opt.first_step(F.cross_entropy(logits, tiny.y, reduction="none"), logits=logits, indices=tiny.idx, labels=tiny.y)
    assert torch.equal(mask, clean) and not bool(opt.last_fallback)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), w_adv[name], rtol=1e-12, atol=1e-14)
    losses2 = tiny.losses(model)
    returned = opt.second_step(losses2)
    torch.testing.assert_close(returned, (a * losses2.detach()).mean(), rtol=1e-14, atol=0)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[name], rtol=1e-12, atol=1e-14)


def test_perturbation_equals_sam_on_the_clean_subset_alone(tiny):
    model, subset, whole = tiny.model(), tiny.model(), tiny.model()
    history, clean = believed_history(tiny)
    opt = make(model, history)
    opt.first_step(tiny.losses(model), logits=model(tiny.x), indices=tiny.idx, labels=tiny.y)
    SAM(subset.parameters(), torch.optim.SGD, rho=0.3, lr=0.5).first_step(tiny.losses(subset, tiny.x[clean], tiny.y[clean]))
    SAM(whole.parameters(), torch.optim.SGD, rho=0.3, lr=0.5).first_step(tiny.losses(whole))
    for p, q in zip(model.parameters(), subset.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
    assert max(float((p - r).detach().abs().max()) for p, r in zip(model.parameters(), whole.parameters())) > 1e-3  # the split matters


@pytest.mark.parametrize("base, kwargs", [(torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=1e-3)), (torch.optim.AdamW, dict(lr=0.01))])
def test_rho_zero_is_the_base_optimizer_exactly(tiny, same_params, base, kwargs):
    model, ref = tiny.model(), tiny.model()
    history, _ = believed_history(tiny)
    opt = CASAM(model.parameters(), base, history=history, rho=0.0, warmup_epochs=0, min_clean=1, **kwargs)
    ref_opt = base(ref.parameters(), **kwargs)
    for _ in range(3):
        clean, _ = casam_step(opt, tiny, model)
        ref_opt.zero_grad()
        tiny.losses(ref).mean().backward()
        ref_opt.step()
    assert not clean.all()  # a real split happened, and with rho = 0, lambda = 1 it changes nothing
    assert same_params(model, ref)


def test_all_clean_mask_is_sam_exactly(tiny, same_params):
    def sam_step(opt, model):
        opt.first_step(tiny.losses(model))
        opt.second_step(tiny.losses(model))

    # in warm-up (the history disagrees with half the labels but is not consulted) ...
    model, ref = tiny.model(), tiny.model()
    history, _ = believed_history(tiny)
    opt = make(model, history, warmup_epochs=2, momentum=0.9, noisy_weight=0.2)
    sam = SAM(ref.parameters(), torch.optim.SGD, rho=0.3, lr=0.5, momentum=0.9)
    for _ in range(3):
        clean, _ = casam_step(opt, tiny, model)
        sam_step(sam, ref)
        assert clean.all()
    assert same_params(model, ref)
    # ... and after it, with a history that agrees with every label
    model, ref = tiny.model(), tiny.model()
    history = SampleHistory(len(tiny.y), 3, debias=False)  # the hand-made first visit dominates
    history.update(tiny.idx, 10.0 * F.one_hot(tiny.y, 3).double(), tiny.y)
    opt = make(model, history, momentum=0.9, noisy_weight=0.2)
    sam = SAM(ref.parameters(), torch.optim.SGD, rho=0.3, lr=0.5, momentum=0.9)
    for _ in range(3):
        clean, _ = casam_step(opt, tiny, model)
        sam_step(sam, ref)
        assert clean.all()
    assert same_params(model, ref)


def test_fallback_perturbs_with_the_whole_batch(tiny):
    model, ref = tiny.model(), tiny.model()
    history, clean = believed_history(tiny)
    opt = make(model, history, min_clean=int(clean.sum()) + 1, noisy_weight=0.0)
    sam = SAM(ref.parameters(), torch.optim.SGD, rho=0.3, lr=0.5)
    mask = opt.first_step(tiny.losses(model), logits=model(tiny.x), indices=tiny.idx, labels=tiny.y)
    sam.first_step(tiny.losses(ref))
    assert bool(opt.last_fallback) and torch.equal(mask, clean) and torch.equal(opt.last_clean_mask, clean)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
    losses2 = tiny.losses(model)
    # the update still weights the likely-noisy samples by lambda (here 0)
    torch.testing.assert_close(opt.second_step(losses2), losses2.detach()[clean].sum() / len(clean), rtol=1e-14, atol=0)


def test_step_with_closure_matches_the_two_step_api(tiny, same_params):
    model, ref = tiny.model(), tiny.model()
    opt = make(model, believed_history(tiny)[0], noisy_weight=0.5)
    ref_opt = make(ref, believed_history(tiny)[0], noisy_weight=0.5)
    expected = tiny.losses(model).mean().detach()

    def closure():
        logits = model(tiny.x)
        return logits, F.cross_entropy(logits, tiny.y, reduction="none")

    returned = opt.step(closure, indices=tiny.idx, labels=tiny.y, model=model)
    assert torch.equal(returned, expected)
    casam_step(ref_opt, tiny, ref)
    assert same_params(model, ref)
    assert torch.equal(opt.history.probs, ref_opt.history.probs)
    with pytest.raises(TypeError, match="closure must return \\(logits, per-sample losses\\) tensors, got None"):
        opt.step(lambda: None, indices=tiny.idx, labels=tiny.y)
    with pytest.raises(TypeError, match="indices= and labels="):
        opt.step(closure)


def test_state_dict_round_trip_continues_identically(tiny, same_params):
    model = tiny.model()
    opt = make(model, SampleHistory(12, 3, criterion="small-loss"), warmup_epochs=1, momentum=0.9, noisy_weight=0.5)
    casam_step(opt, tiny, model)
    opt.set_epoch(1)  # refreshes the small-loss flags from the first epoch
    casam_step(opt, tiny, model)
    saved = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict()})
    for _ in range(2):
        casam_step(opt, tiny, model)

    resumed = tiny.model()
    resumed.load_state_dict(saved["model"])
    opt2 = make(resumed, SampleHistory(12, 3, criterion="small-loss"), warmup_epochs=1, momentum=0.9, noisy_weight=0.5)
    opt2.load_state_dict(saved["opt"])
    assert opt2.epoch == 1
    for _ in range(2):
        casam_step(opt2, tiny, resumed)
    assert same_params(model, resumed)
    assert torch.equal(opt.history.flags, opt2.history.flags) and torch.equal(opt.history.losses, opt2.history.losses)
    with pytest.raises(ValueError, match="no CA-SAM part"):
        opt2.load_state_dict(torch.optim.SGD(resumed.parameters(), lr=0.1).state_dict())


def test_set_epoch_ends_warmup_and_refreshes_only_a_stale_history(tiny):
    model = tiny.model()
    history = SampleHistory(12, 3, criterion="small-loss", clean_fraction=0.5)
    opt = make(model, history, warmup_epochs=1)
    clean, _ = casam_step(opt, tiny, model)
    assert clean.all() and opt.in_warmup and history.stale
    opt.set_epoch(1)
    assert not opt.in_warmup and not history.stale
    flags = history.flags.clone()
    assert flags.sum() < 12  # half of each class
    clean, _ = casam_step(opt, tiny, model)
    assert torch.equal(clean, flags)
    history.refresh()
    history.flags.fill_(True)  # not stale any more: set_epoch must not recompute
    opt.set_epoch(2)
    assert history.flags.all()


def test_grad_cosine_diagnostic(tiny):
    model = tiny.model()
    history, clean = believed_history(tiny)
    opt = make(model, history, measure_cosine=True)
    casam_step(opt, tiny, model)
    w = tiny.weights(tiny.model())
    g_full, g_clean = tiny.grad(model, w), tiny.grad(model, w, subset=clean)
    dot = sum(float((g_full[k] * g_clean[k]).sum()) for k in w)
    norms = [math.sqrt(sum(float((g[k] ** 2).sum()) for k in w)) for g in (g_full, g_clean)]
    assert float(opt.last_grad_cosine) == pytest.approx(dot / norms[0] / norms[1], abs=1e-5)
    assert float(opt.last_grad_cosine) < 0.99
    assert make(tiny.model(), history).last_grad_cosine is None  # off by default


def test_bad_input(tiny):
    model = tiny.model()
    history = SampleHistory(12, 3)
    with pytest.raises(TypeError, match="history must be a casam.history.SampleHistory"):
        CASAM(model.parameters(), torch.optim.SGD, history=None, lr=0.1)
    with pytest.raises(ValueError, match="noisy_weight"):
        make(model, history, noisy_weight=-0.5)
    with pytest.raises(ValueError, match="warmup_epochs must be an integer >= 0, got -1"):
        make(model, history, warmup_epochs=-1)
    with pytest.raises(ValueError, match="rho must be a finite number >= 0, got -1"):
        make(model, history, rho=-1)
    opt = make(model, history)
    with pytest.raises(ValueError, match="epoch"):
        opt.set_epoch(-1)
    logits = model(tiny.x)
    losses = F.cross_entropy(logits, tiny.y, reduction="none")
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        opt.first_step(losses.mean(), logits=logits, indices=tiny.idx, labels=tiny.y)
    with pytest.raises(ValueError, match="do not require grad"):
        opt.first_step(losses.detach(), logits=logits, indices=tiny.idx, labels=tiny.y)
    with pytest.raises(ValueError, match=r"indices must be in \[0, 12\), got 12"):
        opt.first_step(losses, logits=logits, indices=tiny.idx + 1, labels=tiny.y)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\), got 3"):
        opt.first_step(losses, logits=logits, indices=tiny.idx, labels=torch.full_like(tiny.y, 3))
    with pytest.raises(ValueError, match=r"indices must have shape \(12,\)"):
        opt.first_step(losses, logits=logits, indices=tiny.idx[:3], labels=tiny.y)
    with pytest.raises(RuntimeError, match="without a preceding first_step"):
        opt.second_step(losses)
    assert not opt.perturbed and all(p.grad is None for p in model.parameters())
    opt.first_step(losses, logits=logits, indices=tiny.idx, labels=tiny.y)
    with pytest.raises(TypeError, match="per-sample losses at the perturbed weights"):
        opt.second_step(None)
    with pytest.raises(ValueError, match=r"losses must have shape \(12,\)"):
        opt.second_step(tiny.losses(model)[:5])


def split_on_noisy_digits(digits, criterion, *, groups=1, **history_options):
    """CA-SAM on digits with 40 % symmetric label noise, 7 epochs (3 of warm-up): the split's precision
    and recall over epochs 3-6 and the final accuracy on the true labels. groups > 1: `grouped_step`."""
    x, y_true = digits
    rng = np.random.default_rng(0)
    n = len(y_true)
    flip = torch.from_numpy(rng.random(n) < 0.4)
    y = torch.where(flip, (y_true + torch.from_numpy(rng.integers(1, 10, n))) % 10, y_true)
    truly_clean = y == y_true
    gen = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.BatchNorm1d(64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)
    history = SampleHistory(n, 10, beta=0.5, criterion=criterion, **history_options)
    opt = CASAM(model.parameters(), torch.optim.SGD, history=history, rho=0.05, lr=0.2, momentum=0.9, warmup_epochs=3, noisy_weight=0.2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=7)
    selected, truth = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for epoch in range(7):
            opt.set_epoch(epoch)
            for idx in torch.randperm(n, generator=gen).split(128):
                logits = model(x[idx])
                losses = F.cross_entropy(logits, y[idx], reduction="none")
                if groups > 1:

                    def losses_of(rows, targets, idx=idx):
                        with frozen_bn_stats(model):
                            return F.cross_entropy(model(x[idx[rows]]), targets, reduction="none")

                    clean = opt.grouped_step(losses, logits=logits, indices=idx, labels=y[idx], losses_of=losses_of, groups=groups)
                else:
                    clean = opt.first_step(losses, logits=logits, indices=idx, labels=y[idx])
                    with frozen_bn_stats(model):
                        opt.second_step(F.cross_entropy(model(x[idx]), y[idx], reduction="none"))
                if epoch >= 3:
                    selected.append(clean)
                    truth.append(truly_clean[idx])
            sched.step()
    selected, truth = torch.cat(selected), torch.cat(truth)
    model.eval()
    accuracy = float((model(x).argmax(1) == y_true).float().mean())
    return float(truth[selected].float().mean()), float(selected[truth].float().mean()), accuracy


@pytest.fixture(scope="module")
def agreement_on_noisy_digits(digits):
    """Agreement's split on noisy digits, trained once for the tests that compare against it."""
    return split_on_noisy_digits(digits, "agreement")


def test_selects_the_clean_samples_of_a_real_noisy_dataset(agreement_on_noisy_digits):
    """After warm-up the split is far purer than the labels (60 % clean).

    Measured (this seed): precision 0.985, recall 0.90 over epochs 3-6, accuracy 0.93.
    """
    precision, recall, accuracy = agreement_on_noisy_digits
    assert precision > 0.95 and recall > 0.8 and accuracy > 0.88, (precision, recall, accuracy)


def test_class_thresholds_admit_more_of_the_clean_samples_than_agreement(digits, agreement_on_noisy_digits):
    """A per-class bar keeps the clean samples of the classes the network is least sure of.

    Measured (this seed): recall 0.928 against agreement's 0.900, precision 0.955 against 0.985.
    """
    agreement = agreement_on_noisy_digits
    thresholds = split_on_noisy_digits(digits, "class-thresholds")
    assert thresholds[1] > agreement[1] + 0.01, (thresholds, agreement)
    assert 0.93 < thresholds[0] < agreement[0] and thresholds[2] > 0.88, (thresholds, agreement)


def test_two_speed_memory_trades_recall_for_precision_on_noisy_digits(digits, agreement_on_noisy_digits):
    """A slow memory (beta 0.9 beside 0.5) must also agree: fewer memorised labels pass, fewer late-learnt clean ones.

    Measured (this seed): precision 0.986 against agreement's 0.985 (little is memorised in 7 epochs),
    recall 0.889 against 0.900, accuracy 0.934 against 0.935.
    """
    agreement = agreement_on_noisy_digits
    two_speed = split_on_noisy_digits(digits, "agreement", slow_beta=0.9)
    assert two_speed[0] > agreement[0] and two_speed[1] < agreement[1] - 0.005, (two_speed, agreement)
    assert two_speed[2] > 0.88, two_speed


def test_noisy_target_history_trains_the_doubted_samples_on_their_historical_prediction(tiny, same_params):
    """noisy_target="history": the second pass's labels are the given ones for C, argmax h_i outside it;
    the step then equals the formula's step with those labels."""
    history, clean = believed_history(tiny)
    believed = history.predictions(tiny.idx)
    model, ref = tiny.model(), tiny.model()
    opt = make(model, history, noisy_target="history")
    logits = model(tiny.x)
    opt.first_step(F.cross_entropy(logits, tiny.y, reduction="none"), logits=logits, indices=tiny.idx, labels=tiny.y)
    targets = opt.targets(tiny.y)
    assert torch.equal(targets[clean], tiny.y[clean]) and torch.equal(targets[~clean], believed[~clean])
    assert not torch.equal(targets, tiny.y)
    opt.second_step(F.cross_entropy(model(tiny.x), targets, reduction="none"))
    # the closure form asks for the losses against the same labels
    history2, _ = believed_history(tiny)
    opt2 = make(ref, history2, noisy_target="history")
    seen = []

    def closure(labels=tiny.y):
        seen.append(labels)
        out = ref(tiny.x)
        return out, F.cross_entropy(out, labels, reduction="none")

    opt2.step(closure, indices=tiny.idx, labels=tiny.y)
    assert torch.equal(seen[1], targets) and same_params(model, ref)
    # given (the default) and the warm-up leave the labels alone
    for kw in ({}, {"noisy_target": "history", "warmup_epochs": 1}):
        net = tiny.model()
        opt3 = make(net, believed_history(tiny)[0], **kw)
        logits = net(tiny.x)
        opt3.first_step(F.cross_entropy(logits, tiny.y, reduction="none"), logits=logits, indices=tiny.idx, labels=tiny.y)
        assert torch.equal(opt3.targets(tiny.y), tiny.y), kw
    with pytest.raises(RuntimeError, match="after first_step"):
        make(tiny.model(), history).targets(tiny.y)
    with pytest.raises(ValueError, match="noisy_target must be one of given, history"):
        make(tiny.model(), history, noisy_target="predicted")


def test_warmup_rho_zero_makes_the_warmup_plain_sgd(tiny, same_params):
    """warmup_rho=0: no perturbation during warm-up, so each step is the base optimizer's step on the
    batch mean; after the warm-up the radius is rho again."""
    model, ref = tiny.model(), tiny.model()
    history = SampleHistory(len(tiny.y), 3)
    opt = make(model, history, warmup_epochs=1, warmup_rho=0.0, momentum=0.9)
    sgd = torch.optim.SGD(ref.parameters(), lr=0.5, momentum=0.9)
    for _ in range(2):
        casam_step(opt, tiny, model)
        sgd.zero_grad()
        tiny.losses(ref).mean().backward()
        sgd.step()
    assert same_params(model, ref)
    opt.set_epoch(1)
    before = [p.detach().clone() for p in model.parameters()]
    logits = model(tiny.x)
    opt.first_step(F.cross_entropy(logits, tiny.y, reduction="none"), logits=logits, indices=tiny.idx, labels=tiny.y)
    moved = math.sqrt(sum(float(((p.detach() - b) ** 2).sum()) for p, b in zip(model.parameters(), before)))
    assert moved == pytest.approx(0.3)  # rho of make(): the perturbation is back
    with pytest.raises(ValueError, match="warmup_rho must be None or a finite number >= 0"):
        make(tiny.model(), history, warmup_rho=-0.1)


def test_perturb_from_noisy_is_the_control_with_the_likely_noisy_gradient(tiny):
    """perturb_from="noisy" (the study's control): e = rho g_N / |g_N| from the likely-noisy samples; the
    mask returned (and the update's weights) are still the likely-clean ones."""
    rho = 0.3
    model = tiny.model()
    history, clean = believed_history(tiny)
    w = tiny.weights(model)
    opt = make(model, history, rho=rho, perturb_from="noisy")
    assert torch.equal(first_step_at(opt, tiny, model), clean)
    assert_moved_along(model, w, tiny.grad(model, w, subset=~clean), rho)
    opt.second_step(tiny.losses(model))
    with pytest.raises(ValueError, match="perturb_from must be one of clean, noisy, confidence"):
        make(tiny.model(), history, perturb_from="all")


def test_perturb_from_confidence_weighs_each_sample_by_its_history(tiny):
    """perturb_from="confidence": e along grad(sum_i c_i l_i / sum_i c_i), c_i = h_i[y_i] after this batch is
    recorded; the mask returned is still the agreement split; the warm-up perturbs with the whole batch."""
    rho = 0.3
    model = tiny.model()
    history, clean = believed_history(tiny)
    w = tiny.weights(model)
    expected_history = copy.deepcopy(history)
    expected_history.update(tiny.idx, model(tiny.x).detach(), tiny.y)
    c = expected_history.mean_probs(tiny.idx).double().gather(1, tiny.y[:, None])[:, 0]
    assert c[~clean].max() < 0.5 < c[clean].min()  # the believed-mislabelled samples weigh little
    opt = make(model, history, rho=rho, perturb_from="confidence", min_clean=len(tiny.y) + 1)
    assert torch.equal(first_step_at(opt, tiny, model), clean)
    assert not bool(opt.last_fallback)  # no mask, so no fallback to the whole batch, however large min_clean
    assert_moved_along(model, w, tiny.grad(model, w, sample_weights=c / c.sum() * len(c)), rho, rtol=1e-10, atol=1e-12)
    opt.second_step(tiny.losses(model))
    warm, whole = tiny.model(), tiny.model()
    opt = make(warm, believed_history(tiny)[0], rho=rho, perturb_from="confidence", warmup_epochs=1)
    opt.first_step(tiny.losses(warm), logits=warm(tiny.x), indices=tiny.idx, labels=tiny.y)
    SAM(whole.parameters(), torch.optim.SGD, rho=rho, lr=0.5).first_step(tiny.losses(whole))
    for p, q in zip(warm.parameters(), whole.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="weighs every sample itself"):
        make(tiny.model(), history, perturb_from="confidence", perturb_weight=0.5)


@pytest.mark.parametrize("mu", [0.25, 1.0])
def test_perturb_weight_mixes_the_other_side_into_the_perturbation(tiny, mu):
    """perturb_weight mu: e = rho g_mu / |g_mu|, g_mu the gradient of sum a_i l_i with a_i = 1 (likely clean)
    or mu (likely noisy); mu = 1 is SAM's whole-batch perturbation exactly."""
    rho = 0.3
    model, whole = tiny.model(), tiny.model()
    history, clean = believed_history(tiny)
    w = tiny.weights(model)
    a = torch.where(clean, 1.0, torch.tensor(mu, dtype=torch.float64))
    opt = make(model, history, rho=rho, perturb_weight=mu)
    assert torch.equal(first_step_at(opt, tiny, model), clean)
    assert_moved_along(model, w, tiny.grad(model, w, sample_weights=a), rho)
    if mu == 1.0:
        SAM(whole.parameters(), torch.optim.SGD, rho=rho, lr=0.5).first_step(tiny.losses(whole))
        for p, q in zip(model.parameters(), whole.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match=r"perturb_weight must be a number in \[0, 1\]"):
        make(tiny.model(), history, perturb_weight=1.5)


def test_perturb_balance_weighs_each_side_by_its_mean(tiny):
    """perturb_balance: e along grad(mean_C l + mu mean_N l), whatever the sizes of the two sides."""
    rho, mu = 0.3, 0.5
    model = tiny.model()
    history, clean = believed_history(tiny)
    w = tiny.weights(model)
    n_clean, n_noisy = clean.sum().double(), (~clean).sum().double()
    a = torch.where(clean, 1.0 / n_clean, mu / n_noisy) * len(clean)
    opt = make(model, history, rho=rho, perturb_weight=mu, perturb_balance=True)
    first_step_at(opt, tiny, model)
    assert_moved_along(model, w, tiny.grad(model, w, sample_weights=a), rho)
    with pytest.raises(TypeError, match="perturb_balance must be True or False"):
        make(tiny.model(), history, perturb_weight=mu, perturb_balance="yes")


@pytest.mark.parametrize("cutoff, heavy", [(0.5, False), (0.4, True)])
def test_perturb_cutoff_switches_mu_off_when_the_noise_estimate_is_above_it(tiny, cutoff, heavy):
    """The history believes 5 of 12 labels wrong: estimate 5/12, read once when the warm-up ends. Below the
    cutoff e is the mu-weighted direction, above it the likely-clean one; later estimates do not count."""
    rho, mu = 0.3, 0.5
    model = tiny.model()
    history, clean = believed_history(tiny)
    w = tiny.weights(model)
    opt = make(model, history, rho=rho, perturb_weight=mu, perturb_cutoff=cutoff, warmup_epochs=1)
    assert opt.noise_estimate is None and opt.current_perturb_weight == mu  # not read during the warm-up
    opt.set_epoch(1)
    assert opt.noise_estimate == pytest.approx(5 / 12)
    assert opt.current_perturb_weight == (0.0 if heavy else mu)
    a = clean.double() if heavy else torch.where(clean, 1.0, torch.tensor(mu, dtype=torch.float64))
    first_step_at(opt, tiny, model)
    assert_moved_along(model, w, tiny.grad(model, w, sample_weights=a), rho)
    opt.second_step(tiny.losses(model))

    history.update(tiny.idx, 10.0 * F.one_hot(tiny.y, 3).double(), tiny.y)  # the network now agrees with every label
    opt.set_epoch(2)
    assert history.noise_rate < 0.1 and opt.noise_estimate == pytest.approx(5 / 12)
    resumed = make(tiny.model(), SampleHistory(12, 3), perturb_weight=mu, perturb_cutoff=cutoff, warmup_epochs=1)
    resumed.load_state_dict(opt.state_dict())
    assert resumed.noise_estimate == opt.noise_estimate and resumed.current_perturb_weight == opt.current_perturb_weight


@pytest.mark.parametrize("cutoff, heavy", [(0.5, False), (0.4, True)])
def test_heavy_warmup_extends_the_warmup_only_above_the_cutoff(tiny, cutoff, heavy):
    """heavy_warmup_epochs 3 after a 1-epoch warm-up: the estimate (5/12) is read when the first warm-up
    ends; above the cutoff epochs 1-2 stay warm-up (C = B, plain steps at warmup_rho 0: w moves by
    nothing before the update) and the split (the history's mask) starts at epoch 3; below it at epoch 1.
    A resumed optimizer extends the same way."""
    model = tiny.model()
    history, clean = believed_history(tiny)
    opt = make(model, history, rho=0.3, perturb_weight=0.5, perturb_cutoff=cutoff, warmup_epochs=1, heavy_warmup_epochs=3, warmup_rho=0.0)
    assert opt.in_warmup
    for epoch in (1, 2, 3):
        opt.set_epoch(epoch)
        assert opt.noise_estimate == pytest.approx(5 / 12)
        assert opt.in_warmup == (heavy and epoch < 3)
        w = tiny.weights(model)
        mask = first_step_at(opt, tiny, model)
        assert torch.equal(mask, torch.ones_like(clean) if opt.in_warmup else history.clean_mask(tiny.idx, tiny.y))
        assert mask.all() == opt.in_warmup  # the history still doubts some labels once the split starts
        if opt.in_warmup:
            assert all(torch.equal(v, w[k]) for k, v in tiny.weights(model).items())  # radius 0 in the warm-up
        opt.second_step(tiny.losses(model))
        if epoch == 2:
            resumed = make(tiny.model(), SampleHistory(12, 3), perturb_weight=0.5, perturb_cutoff=cutoff, warmup_epochs=1, heavy_warmup_epochs=3)
            resumed.load_state_dict(opt.state_dict())
            assert resumed.in_warmup == opt.in_warmup


def test_heavy_warmup_bad_input(tiny):
    history, _ = believed_history(tiny)
    with pytest.raises(ValueError, match="heavy_warmup_epochs needs perturb_cutoff"):
        make(tiny.model(), history, heavy_warmup_epochs=4)
    for bad in (-1, 2.5, True):
        with pytest.raises((ValueError, TypeError), match="heavy_warmup_epochs"):
            make(tiny.model(), history, perturb_cutoff=0.5, heavy_warmup_epochs=bad)


def test_history_from_epoch_leaves_the_first_epochs_out_of_the_history(tiny):
    """history_from_epoch 1 with a two-epoch warm-up: epoch 0 trains (the weights move) but records nothing,
    epoch 1 records, so when the split starts h_i is the second epoch's softmax alone (debiased, one
    visit); with 0 it blends both epochs'. The warm-up's steps are the same either way, and a resumed
    optimizer keeps recording from the same epoch."""
    def run(history_from):
        model, history = tiny.model(), SampleHistory(len(tiny.y), 3, beta=0.9)
        opt = make(model, history, warmup_epochs=2, history_from_epoch=history_from)
        outputs = []
        for epoch in (0, 1):
            opt.set_epoch(epoch)
            w = tiny.weights(model)
            with torch.no_grad():
                outputs.append(torch.softmax(model(tiny.x), 1))
            assert first_step_at(opt, tiny, model).all()  # warm-up: C = B
            opt.second_step(tiny.losses(model))
            assert any(not torch.equal(v, w[k]) for k, v in tiny.weights(model).items())
            assert int(history.counts.min()) == int(history.counts.max()) == max(0, epoch + 1 - history_from)
        return model, opt, history, outputs

    late_model, late, late_history, outputs = run(1)
    all_model, _, all_history, same_outputs = run(0)
    assert all(torch.equal(a, b) for a, b in zip(outputs, same_outputs))  # the same warm-up steps
    assert all(torch.equal(v, all_model.state_dict()[k]) for k, v in late_model.state_dict().items())
    torch.testing.assert_close(late_history.mean_probs(tiny.idx), outputs[1].float())
    both = (0.9 * 0.1 * outputs[0] + 0.1 * outputs[1]) / (1 - 0.9**2)
    torch.testing.assert_close(all_history.mean_probs(tiny.idx), both.float())
    resumed = make(tiny.model(), SampleHistory(len(tiny.y), 3), warmup_epochs=2, history_from_epoch=1)
    resumed.load_state_dict(late.state_dict())
    assert resumed.history_from_epoch == 1 and torch.equal(resumed.history.counts, late_history.counts)


def test_history_from_epoch_bad_input(tiny):
    history, _ = believed_history(tiny)
    with pytest.raises(ValueError, match=r"history_from_epoch must be below warmup_epochs \(2\)"):
        make(tiny.model(), history, warmup_epochs=2, history_from_epoch=2)
    for bad in (-1, 0.5, True):
        with pytest.raises(ValueError, match="history_from_epoch"):
            make(tiny.model(), history, warmup_epochs=2, history_from_epoch=bad)


@pytest.mark.parametrize("cutoff, heavy", [(0.5, False), (0.4, True)])
def test_heavy_criterion_takes_over_the_split_only_above_the_cutoff(tiny, cutoff, heavy):
    """heavy_criterion small-loss after a 1-epoch warm-up: the estimate (5/12) is read when the warm-up ends;
    above the cutoff the history's criterion becomes small-loss at once (its flags refreshed before the first
    split: the mask is that of a small-loss history fed the same batches), below it agreement stays. A
    resumed optimizer hands its history the same criterion."""
    def fed(criterion):
        history, _ = believed_history(tiny, criterion=criterion)
        return history

    history = fed("agreement")
    opt = make(tiny.model(), history, perturb_weight=0.5, perturb_cutoff=cutoff, warmup_epochs=1, heavy_criterion="small-loss")
    opt.set_epoch(1)
    assert opt.noise_estimate == pytest.approx(5 / 12) and opt.heavy_noise == heavy
    assert history.criterion == ("small-loss" if heavy else "agreement")
    expected = fed("small-loss" if heavy else "agreement")
    expected.refresh()
    assert torch.equal(history.clean_mask(tiny.idx, tiny.y), expected.clean_mask(tiny.idx, tiny.y))
    if heavy:  # small-loss keeps round(r n_c) per class: not agreement's mask here
        assert not torch.equal(history.clean_mask(tiny.idx, tiny.y), fed("agreement").clean_mask(tiny.idx, tiny.y))
    resumed_history = SampleHistory(len(tiny.y), 3)
    resumed = make(tiny.model(), resumed_history, perturb_cutoff=cutoff, warmup_epochs=1, heavy_criterion="small-loss")
    resumed.load_state_dict(opt.state_dict())
    assert resumed_history.criterion == history.criterion
    assert torch.equal(resumed_history.clean_mask(tiny.idx, tiny.y), history.clean_mask(tiny.idx, tiny.y))


def test_heavy_criterion_bad_input(tiny):
    history, _ = believed_history(tiny)
    with pytest.raises(ValueError, match="heavy_criterion needs perturb_cutoff"):
        make(tiny.model(), history, heavy_criterion="small-loss")
    with pytest.raises(ValueError, match="heavy_criterion must be None or one of agreement"):
        make(tiny.model(), history, perturb_cutoff=0.5, heavy_criterion="smallest-loss")
    slow = SampleHistory(len(tiny.y), 3, beta=0.5, slow_beta=0.9)
    with pytest.raises(ValueError, match="slow memory"):
        make(tiny.model(), slow, perturb_cutoff=0.5, heavy_criterion="small-loss")


@pytest.mark.parametrize("cutoff, heavy", [(0.5, False), (0.4, True)])
def test_heavy_groups_replace_the_callers_groups_only_above_the_cutoff(tiny, cutoff, heavy):
    """heavy_groups 1 after a 1-epoch warm-up: before the estimate (5/12) is read, and below the cutoff, a
    step takes the caller's groups; above it, one. A resumed optimizer reads the same (the estimate is saved)."""
    history, _ = believed_history(tiny)
    opt = make(tiny.model(), history, perturb_cutoff=cutoff, warmup_epochs=1, heavy_groups=1)
    assert opt.perturbation_groups(8) == 8  # the warm-up: no estimate yet
    opt.set_epoch(1)
    assert opt.heavy_noise == heavy and opt.perturbation_groups(8) == (1 if heavy else 8)
    resumed = make(tiny.model(), SampleHistory(len(tiny.y), 3), perturb_cutoff=cutoff, warmup_epochs=1, heavy_groups=1)
    resumed.load_state_dict(opt.state_dict())
    assert resumed.perturbation_groups(8) == (1 if heavy else 8)
    plain = make(tiny.model(), believed_history(tiny)[0], perturb_cutoff=cutoff, warmup_epochs=1)
    plain.set_epoch(1)
    assert plain.perturbation_groups(8) == 8  # no heavy_groups: the caller's


def test_heavy_groups_bad_input(tiny):
    history, _ = believed_history(tiny)
    with pytest.raises(ValueError, match="heavy_groups needs perturb_cutoff"):
        make(tiny.model(), history, heavy_groups=1)
    for bad in (0, 1.5, True, "1"):
        with pytest.raises(ValueError, match="heavy_groups must be None or an integer >= 1"):
            make(tiny.model(), history, perturb_cutoff=0.5, heavy_groups=bad)


def radius_now(opt):
    return opt._radius(opt.param_groups[0])


@pytest.mark.parametrize("name, base, heavier, now", [("noisy_weight", 1.0, 0.25, lambda opt: opt.current_noisy_weight),
                                                      ("rho", 0.3, 0.1, radius_now)])
@pytest.mark.parametrize("cutoff, heavy", [(0.5, False), (0.4, True)])
def test_heavy_lambda_and_radius_replace_theirs_only_above_the_cutoff(tiny, cutoff, heavy, name, base, heavier, now):
    """heavy_noisy_weight 0.25 with lambda 1 (heavy_rho 0.1 with rho 0.3) after a 1-epoch warm-up: above the cutoff
    (estimate 5/12) the step after the warm-up is the step of an optimizer with lambda 0.25 (rho 0.1; same weights
    after it), below it lambda 1's (rho 0.3's). A resumed optimizer reads the same value (the estimate is saved)."""
    def stepped(**options):
        model = tiny.model()
        opt = make(model, believed_history(tiny)[0], perturb_cutoff=cutoff, warmup_epochs=1, **options)
        opt.set_epoch(1)
        casam_step(opt, tiny, model)
        return opt, [p.detach().clone() for p in model.parameters()]

    opt, weights = stepped(**{name: base, f"heavy_{name}": heavier})
    assert opt.heavy_noise == heavy and now(opt) == (heavier if heavy else base)
    _, expected = stepped(**{name: heavier if heavy else base})
    _, other = stepped(**{name: base if heavy else heavier})
    assert all(torch.equal(a, b) for a, b in zip(weights, expected))
    assert not all(torch.equal(a, b) for a, b in zip(weights, other))
    resumed = make(tiny.model(), SampleHistory(len(tiny.y), 3), perturb_cutoff=cutoff, warmup_epochs=1, **{name: base, f"heavy_{name}": heavier})
    resumed.load_state_dict(opt.state_dict())
    assert now(resumed) == now(opt)


def test_heavy_noisy_weight_bad_input(tiny):
    history, _ = believed_history(tiny)
    with pytest.raises(ValueError, match="heavy_noisy_weight needs perturb_cutoff"):
        make(tiny.model(), history, heavy_noisy_weight=0.0)  # 0 is a lambda, not "off"
    for bad in (-0.5, float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match=r"heavy_noisy_weight \(lambda\) must be a finite number >= 0"):
            make(tiny.model(), history, perturb_cutoff=0.5, heavy_noisy_weight=bad)


@pytest.mark.parametrize("cutoff, heavy", [(0.5, False), (0.4, True)])
def test_heavy_rho_leaves_a_warmup_that_heavy_noise_extends_at_the_warmups_radius(tiny, cutoff, heavy):
    opt = make(tiny.model(), believed_history(tiny)[0], perturb_cutoff=cutoff, warmup_epochs=1, heavy_warmup_epochs=2,
               rho=0.3, heavy_rho=0.1, warmup_rho=0.0)
    opt.set_epoch(1)
    assert opt.in_warmup == heavy and radius_now(opt) == (0.0 if heavy else 0.3)
    opt.set_epoch(2)
    assert radius_now(opt) == (0.1 if heavy else 0.3)


def test_heavy_rho_bad_input(tiny):
    history, _ = believed_history(tiny)
    with pytest.raises(ValueError, match="heavy_rho needs perturb_cutoff"):
        make(tiny.model(), history, heavy_rho=0.05)
    for bad in (-0.1, float("nan"), float("inf"), True, "0.05"):
        with pytest.raises(ValueError, match="heavy_rho must be None or a finite number >= 0"):
            make(tiny.model(), history, perturb_cutoff=0.5, heavy_rho=bad)


@pytest.mark.parametrize("history_loss", ["cross-entropy", "training"])
def test_history_records_the_cross_entropy_on_the_given_label_whatever_the_training_loss(tiny, history_loss):
    """A training loss with a label-free term (ELR's shape: CE + 3 log(1 - <p, t>), lowest for the samples the
    network is surest of) must not become the history's l_i, which small-loss and gmm rank by the given label:
    by default the history records the first pass's cross-entropy against the given labels; "training" records
    the losses given to the step (the behaviour before round 32). The step itself trains on the given losses."""
    model = tiny.model()
    history = SampleHistory(len(tiny.y), 3, criterion="small-loss")
    opt = make(model, history, history_loss=history_loss)
    logits = model(tiny.x)
    ce = F.cross_entropy(logits, tiny.y, reduction="none")
    target = F.one_hot((tiny.y + 1) % 3, 3).to(logits.dtype)  # a label-free target, as ELR's running average is
    training = ce + 3 * torch.log1p(-(logits.softmax(1) * target).sum(1).clamp(max=1 - 1e-4))
    opt.first_step(training, logits=logits, indices=tiny.idx, labels=tiny.y)
    recorded = history.mean_losses(tiny.idx)
    torch.testing.assert_close(recorded, (ce if history_loss == "cross-entropy" else training).detach().float())
    assert not torch.allclose(recorded, (training if history_loss == "cross-entropy" else ce).detach().float())
    with pytest.raises(ValueError, match="history_loss must be one of cross-entropy, training, got 'ce'"):
        make(tiny.model(), history, history_loss="ce")


def test_perturb_cutoff_bad_input(tiny):
    history, _ = believed_history(tiny)
    for bad in (0, 1.5, True, "0.5"):
        with pytest.raises(ValueError, match=r"perturb_cutoff must be a number in \(0, 1\]"):
            make(tiny.model(), history, perturb_weight=0.5, perturb_cutoff=bad)


def test_perturb_cutoff_with_mu_0_reads_the_estimate_and_changes_nothing(tiny):
    """mu 0 leaves the cutoff nothing to switch (so `--perturb-weight 0` alone gives the paper's perturbation
    under the command line's defaults): the direction is the likely-clean one on either side of it."""
    rho = 0.3
    model = tiny.model()
    history, clean = believed_history(tiny)
    w = tiny.weights(model)
    opt = make(model, history, rho=rho, perturb_cutoff=0.9, warmup_epochs=1)
    opt.set_epoch(1)
    assert opt.noise_estimate == pytest.approx(5 / 12) and opt.current_perturb_weight == 0.0
    first_step_at(opt, tiny, model)
    assert_moved_along(model, w, tiny.grad(model, w, sample_weights=clean.double()), rho)


# ---------------------------------------------------------------- a perturbation per group (grouped_step)
def grouped_step_at(opt, tiny, model, groups):
    logits = model(tiny.x)

    def losses_of(rows, targets):
        return F.cross_entropy(model(tiny.x[rows]), targets, reduction="none")

    return opt.grouped_step(
        F.cross_entropy(logits, tiny.y, reduction="none"), logits=logits, indices=tiny.idx, labels=tiny.y, losses_of=losses_of, groups=groups
    )


def test_grouped_step_perturbs_each_group_by_its_own_clean_samples(tiny):
    """Two groups: each gets an equal share of the likely-clean samples (dealt in turn, then the others),
    is evaluated at w + rho g_g / ||g_g|| with g_g the gradient of its clean mean, and the update is the
    sum over the groups of (1/|B|) sum_i a_i grad l_i(w + e_g)."""
    rho, lr, lam = 0.3, 0.5, 0.3
    model = tiny.model()
    history, clean = believed_history(tiny)
    w = tiny.weights(model)
    # clean 0 2 3 6 7 9 11, then noisy 1 4 5 8 10, dealt to the two groups in turn
    groups = [torch.tensor([0, 3, 7, 11, 4, 8]), torch.tensor([2, 6, 9, 1, 5, 10])]
    a = torch.where(clean, 1.0, torch.tensor(lam, dtype=torch.float64))
    update = {k: torch.zeros_like(v) for k, v in w.items()}
    for rows in groups:
        in_group = torch.zeros(len(tiny.y), dtype=torch.bool)
        in_group[rows] = True
        g = tiny.grad(model, w, subset=clean & in_group)
        norm = math.sqrt(sum(float((v**2).sum()) for v in g.values()))
        g2 = tiny.grad(model, {k: w[k] + rho * g[k] / norm for k in w}, sample_weights=a * in_group)
        update = {k: update[k] + g2[k] for k in w}

    opt = make(model, history, rho=rho, lr=lr, noisy_weight=lam)
    mask = grouped_step_at(opt, tiny, model, groups=2)
    assert torch.equal(mask, clean) and not opt.perturbed
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), w[name] - lr * update[name], rtol=1e-12, atol=1e-14)


def test_grouped_step_with_one_group_is_the_two_step_api(tiny, same_params):
    one, two = tiny.model(), tiny.model()
    opt1, opt2 = make(one, believed_history(tiny)[0], momentum=0.9), make(two, believed_history(tiny)[0], momentum=0.9)
    for _ in range(3):
        grouped_step_at(opt1, tiny, one, groups=1)
        casam_step(opt2, tiny, two)
    assert same_params(one, two)


def test_grouped_step_in_the_warmup_is_plain_sam_on_the_batch(tiny, same_params):
    grouped, sam = tiny.model(), tiny.model()
    opt = make(grouped, SampleHistory(len(tiny.y), 3), warmup_epochs=1)
    grouped_step_at(opt, tiny, grouped, groups=4)
    ref = SAM(sam.parameters(), torch.optim.SGD, rho=0.3, lr=0.5)
    ref.first_step(tiny.losses(sam))
    ref.second_step(tiny.losses(sam))
    assert same_params(grouped, sam)


def test_grouped_step_caps_the_groups_at_two_samples_each(tiny, same_params):
    """Batch normalisation needs two samples: 100 groups of a 12-sample batch are 6 groups of 2."""
    six, hundred = tiny.model(), tiny.model()
    grouped_step_at(make(six, believed_history(tiny)[0]), tiny, six, groups=6)
    grouped_step_at(make(hundred, believed_history(tiny)[0]), tiny, hundred, groups=100)
    assert same_params(six, hundred) and not same_params(six, tiny.model())


def test_grouped_step_bad_input(tiny):
    model = tiny.model()
    opt = make(model, believed_history(tiny)[0])
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="groups must be an integer >= 1"):
            grouped_step_at(opt, tiny, model, groups=bad)
    logits = model(tiny.x)
    with pytest.raises(ValueError, match=r"logits must have shape \(12, num_classes\)"):
        opt.grouped_step(F.cross_entropy(logits, tiny.y, reduction="none"), logits=logits[:5], indices=tiny.idx, labels=tiny.y,
                         losses_of=lambda rows, targets: None, groups=2)
    with pytest.raises(ValueError, match="build CASAM with measure_cosine=False"):
        grouped_step_at(make(model, believed_history(tiny)[0], measure_cosine=True), tiny, model, groups=2)
    assert not opt.perturbed


def test_grouped_perturbations_learn_and_split_noisy_digits(digits, agreement_on_noisy_digits):
    """Four perturbations per batch (about 19 likely-clean samples each) on the real noisy digits: the
    split and the accuracy stay those of one perturbation per batch.

    Measured (this seed): precision 0.985, recall 0.897, accuracy 0.930 (one perturbation: 0.985, 0.900, 0.935).
    """
    grouped = split_on_noisy_digits(digits, "agreement", groups=4)
    assert grouped[0] > 0.95 and grouped[1] > 0.8 and grouped[2] > 0.88, grouped
