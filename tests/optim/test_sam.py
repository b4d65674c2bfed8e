import io
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from casam.optim import SAM, frozen_bn_stats


def sgd_sam_reference(tiny, model, *, rho, lr):
    """w - lr * grad L(w + rho g / ||g||), written out from the formula."""
    w = tiny.weights(model)
    g = tiny.grad(model, w)
    norm = math.sqrt(sum(float((v**2).sum()) for v in g.values()))
    w_adv = {k: w[k] + rho * g[k] / norm for k in w}
    g_sam = tiny.grad(model, w_adv)
    return {k: w[k] - lr * g_sam[k] for k in w}, w_adv


def sam_step(opt, tiny, model):
    tiny.losses(model).mean().backward()
    opt.first_step(zero_grad=True)
    tiny.losses(model).mean().backward()
    opt.second_step(zero_grad=True)


def test_one_step_equals_the_formula(tiny):
    model = tiny.model()
    expected, _ = sgd_sam_reference(tiny, model, rho=0.3, lr=0.5)
    plain = {k: v - 0.5 * g for (k, v), g in zip(tiny.weights(model).items(), tiny.grad(model, tiny.weights(model)).values())}
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.3, lr=0.5)
    sam_step(opt, tiny, model)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[name], rtol=1e-12, atol=1e-14)
    # the check has teeth: the SAM step is measurably different from a plain SGD step
    assert max(float((plain[k] - expected[k]).abs().max()) for k in plain) > 1e-3


def test_first_step_moves_to_the_perturbed_point(tiny):
    model = tiny.model()
    _, w_adv = sgd_sam_reference(tiny, model, rho=0.3, lr=0.5)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.3, lr=0.5)
    opt.first_step(tiny.losses(model))
    assert opt.perturbed
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), w_adv[name], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("base, kwargs", [(torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=1e-3)), (torch.optim.AdamW, dict(lr=0.01))])
def test_rho_zero_is_the_base_optimizer_exactly(tiny, same_params, base, kwargs):
    model, ref = tiny.model(), tiny.model()
    opt, ref_opt = SAM(model.parameters(), base, rho=0.0, **kwargs), base(ref.parameters(), **kwargs)
    for _ in range(3):
        sam_step(opt, tiny, model)
        ref_opt.zero_grad()
        tiny.losses(ref).mean().backward()
        ref_opt.step()
    assert same_params(model, ref)


def test_weights_restored_bit_exactly():
    # float32 weights of very different magnitudes and a large rho: (w + e) - e != w in floating point
    gen = torch.Generator().manual_seed(3)
    w0 = (torch.randn(1000, generator=gen) * torch.logspace(-6, 3, 1000)).requires_grad_(True)
    opt = SAM([w0], torch.optim.SGD, rho=50.0, lr=0.0)
    before = w0.detach().clone()
    (w0**3).sum().backward()
    e = 50.0 * w0.grad / w0.grad.norm()
    opt.first_step()
    assert not torch.equal((w0.detach() - e), before)  # naive subtraction would drift
    (w0**3).sum().backward()
    opt.second_step()
    assert torch.equal(w0.detach(), before)


def test_params_without_grad_are_left_alone(tiny):
    model = tiny.model()
    frozen = model[2].bias
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.1)
    before = frozen.detach().clone()
    loss = tiny.losses(model).mean() - 0 * frozen.sum()  # keeps the graph; then drop its grad
    loss.backward()
    frozen.grad = None
    opt.first_step()
    assert torch.equal(frozen.detach(), before)
    tiny.losses(model).mean().backward()
    frozen.grad = None
    opt.second_step()
    assert torch.equal(frozen.detach(), before)
    assert not torch.equal(model[0].weight.detach(), tiny.model()[0].weight.detach())


def test_step_with_closure_returns_first_pass_loss(tiny):
    model, ref = tiny.model(), tiny.model()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.2, lr=0.1)
    ref_opt = SAM(ref.parameters(), torch.optim.SGD, rho=0.2, lr=0.1)
    expected = tiny.losses(model).mean().detach()

    def closure():
        loss = tiny.losses(model).mean()
        loss.backward()
        return loss

    returned = opt.step(closure)
    assert torch.equal(returned, expected) and not returned.requires_grad
    sam_step(ref_opt, tiny, ref)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), ref.parameters()))
    assert model[0].weight.grad is not None  # the second pass's gradient is left, as torch optimizers do


def test_losses_passed_to_the_steps_equal_the_classic_loop(tiny, same_params):
    model, ref = tiny.model(), tiny.model()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.2, lr=0.1, momentum=0.9)
    ref_opt = SAM(ref.parameters(), torch.optim.SGD, rho=0.2, lr=0.1, momentum=0.9)
    for _ in range(2):
        first = opt.first_step(tiny.losses(model))  # per-sample losses are averaged
        second = opt.second_step(tiny.losses(model).mean())
        sam_step(ref_opt, tiny, ref)
    assert first.ndim == 0 and second.ndim == 0 and not first.requires_grad
    assert same_params(model, ref)


def test_state_dict_round_trip_continues_identically(tiny, same_params):
    def make(model):
        return SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9)

    model = tiny.model()
    opt = make(model)
    sam_step(opt, tiny, model)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    sam_step(opt, tiny, model)
    sam_step(opt, tiny, model)

    buffer.seek(0)
    saved = torch.load(buffer)
    resumed = tiny.model()
    resumed.load_state_dict(saved["model"])
    opt2 = make(resumed)
    opt2.load_state_dict(saved["opt"])
    assert opt2.param_groups is opt2.base_optimizer.param_groups and opt2.state is opt2.base_optimizer.state
    sam_step(opt2, tiny, resumed)
    sam_step(opt2, tiny, resumed)
    assert same_params(model, resumed)
    # a wrong-wrapper state is refused
    bad = opt.state_dict()
    bad["wrapper"] = {"class": "CASAM"}
    with pytest.raises(ValueError, match="CASAM"):
        opt2.load_state_dict(bad)


def test_lr_scheduler_on_the_wrapper_drives_the_base(tiny):
    model = tiny.model()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "scheduler.step() before optimizer.step()" warning
        sam_step(opt, tiny, model)
        sched.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(0.05)


def test_per_group_rho(tiny):
    model = tiny.model()
    first, second = list(model[0].parameters()), list(model[2].parameters())
    opt = SAM([{"params": first, "rho": 0.0}, {"params": second}], torch.optim.SGD, rho=0.4, lr=0.1)
    w = tiny.weights(model)
    g = tiny.grad(model, w)
    norm = math.sqrt(sum(float((v**2).sum()) for v in g.values()))  # one norm over all groups
    opt.first_step(tiny.losses(model))
    for name, p in model.named_parameters():
        expected = w[name] if name.startswith("0.") else w[name] + 0.4 * g[name] / norm
        torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=1e-14)
    assert [group["rho"] for group in opt.param_groups] == [0.0, 0.4]


def test_wraps_an_optimizer_instance(tiny, same_params):
    model, ref = tiny.model(), tiny.model()
    opt = SAM(None, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), rho=0.2)
    ref_opt = SAM(ref.parameters(), torch.optim.SGD, rho=0.2, lr=0.1, momentum=0.9)
    for _ in range(2):
        sam_step(opt, tiny, model)
        sam_step(ref_opt, tiny, ref)
    assert same_params(model, ref)


def test_closure_freezes_bn_of_the_given_model(make_tiny):
    tiny = make_tiny(bn=True)
    model = tiny.model().train()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.2, lr=0.1)
    calls = []

    def closure():
        calls.append(model[1].running_mean.clone())
        loss = tiny.losses(model).mean()
        loss.backward()
        return loss

    opt.step(closure, model=model)
    ref = tiny.model().train()
    ref(tiny.x)  # exactly one forward that updates the statistics
    assert torch.equal(model[1].running_mean, ref[1].running_mean)
    assert int(model[1].num_batches_tracked) == 1 and len(calls) == 2


def test_bad_input():
    w = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match="rho must be a finite number >= 0, got -0.1"):
        SAM([w], torch.optim.SGD, rho=-0.1, lr=0.1)
    with pytest.raises(ValueError, match="rho"):
        SAM([{"params": [w], "rho": -1.0}], torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match="eta"):
        SAM([w], torch.optim.SGD, eta=-1.0, lr=0.1)
    with pytest.raises(TypeError, match="base_optimizer"):
        SAM([w], "sgd", lr=0.1)
    with pytest.raises(TypeError, match="params must be None"):
        SAM([w], torch.optim.SGD([w], lr=0.1))
    opt = SAM([w], torch.optim.SGD, lr=0.1)
    with pytest.raises(TypeError, match="closure"):
        opt.step()
    with pytest.raises(TypeError, match="got NoneType"):
        opt.step(lambda: None)
    with pytest.raises(RuntimeError, match="no gradients"):
        opt.first_step()
    with pytest.raises(RuntimeError, match="without a preceding first_step"):
        opt.second_step()
    with pytest.raises(ValueError, match="does not require grad"):
        opt.first_step(torch.tensor(1.0))
    with pytest.raises(TypeError, match="tensor or None, got bool"):
        opt.first_step(True)
    (w**2 + w).sum().backward()
    opt.first_step()
    with pytest.raises(RuntimeError, match="called twice"):
        opt.first_step()


def test_sam_trains_on_real_data(digits):
    x, y = digits
    gen = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.BatchNorm1d(32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    for step in range(40):
        batch = torch.randperm(len(y), generator=gen)[:256]
        opt.first_step(F.cross_entropy(model(x[batch]), y[batch]))
        with frozen_bn_stats(model):
            opt.second_step(F.cross_entropy(model(x[batch]), y[batch]))
    model.eval()
    assert (model(x).argmax(1) == y).float().mean() > 0.85  # chance: 0.1; measured 0.93
