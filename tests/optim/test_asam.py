import copy
import math

import pytest
import torch

from casam.optim import ASAM, SAM


def asam_step(opt, tiny, model):
    opt.first_step(tiny.losses(model))
    opt.second_step(tiny.losses(model))


def test_one_step_equals_the_formula(tiny):
    rho, eta, lr = 0.5, 0.01, 0.3
    model = tiny.model()
    w = tiny.weights(model)
    g = tiny.grad(model, w)
    t = {k: w[k].abs() + eta for k in w}
    norm = math.sqrt(sum(float(((t[k] * g[k]) ** 2).sum()) for k in w))
    w_adv = {k: w[k] + rho * t[k] ** 2 * g[k] / norm for k in w}
    g_adv = tiny.grad(model, w_adv)
    expected = {k: w[k] - lr * g_adv[k] for k in w}

    opt = ASAM(model.parameters(), torch.optim.SGD, rho=rho, eta=eta, lr=lr)
    opt.first_step(tiny.losses(model))
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), w_adv[name], rtol=1e-12, atol=1e-14)
    opt.second_step(tiny.losses(model))
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[name], rtol=1e-12, atol=1e-14)


def test_scale_invariant_where_sam_is_not(tiny):
    # ReLU nets are unchanged by scaling layer 1 by s and layer 2's weight by 1/s. With eta = 0 ASAM's
    # perturbation follows that rescaling, so the loss at w + e is the same for every s; SAM's is not.
    def loss_at_perturbed_point(cls, s):
        model = tiny.model()
        model[1] = torch.nn.ReLU()
        with torch.no_grad():
            model[0].weight.mul_(s)
            model[0].bias.mul_(s)
            model[2].weight.div_(s)
        opt = cls(model.parameters(), torch.optim.SGD, rho=0.5, eta=0.0, lr=0.1)
        opt.first_step(tiny.losses(model))
        return float(tiny.losses(model).mean().detach())

    asam = [loss_at_perturbed_point(ASAM, s) for s in (1.0, 4.0)]
    sam = [loss_at_perturbed_point(SAM, s) for s in (1.0, 4.0)]
    assert asam[0] == pytest.approx(asam[1], rel=1e-10)
    assert abs(sam[0] - sam[1]) > 1e-3


@pytest.mark.parametrize("base, kwargs", [(torch.optim.SGD, dict(lr=0.1, momentum=0.9)), (torch.optim.AdamW, dict(lr=0.01))])
def test_rho_zero_is_the_base_optimizer_exactly(tiny, same_params, base, kwargs):
    model, ref = tiny.model(), tiny.model()
    opt, ref_opt = ASAM(model.parameters(), base, rho=0.0, **kwargs), base(ref.parameters(), **kwargs)
    for _ in range(3):
        asam_step(opt, tiny, model)
        ref_opt.zero_grad()
        tiny.losses(ref).mean().backward()
        ref_opt.step()
    assert same_params(model, ref)


def test_per_group_eta(tiny):
    model = tiny.model()
    first, second = list(model[0].parameters()), list(model[2].parameters())
    opt = ASAM([{"params": first, "eta": 1.0}, {"params": second}], torch.optim.SGD, rho=0.5, eta=0.01, lr=0.1)
    w = tiny.weights(model)
    g = tiny.grad(model, w)
    t = {k: w[k].abs() + (1.0 if k.startswith("0.") else 0.01) for k in w}
    norm = math.sqrt(sum(float(((t[k] * g[k]) ** 2).sum()) for k in w))
    opt.first_step(tiny.losses(model))
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), w[name] + 0.5 * t[name] ** 2 * g[name] / norm, rtol=1e-12, atol=1e-14)


def test_state_dict_round_trip(tiny, same_params):
    model = tiny.model()
    opt = ASAM(model.parameters(), torch.optim.AdamW, rho=0.5, lr=0.01)
    asam_step(opt, tiny, model)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())  # state_dict() holds references
    asam_step(opt, tiny, model)
    resumed = tiny.model()
    resumed.load_state_dict(saved_model)
    opt2 = ASAM(resumed.parameters(), torch.optim.AdamW, rho=0.5, lr=0.01)
    opt2.load_state_dict(saved_opt)
    asam_step(opt2, tiny, resumed)
    assert same_params(model, resumed)
    assert opt2.param_groups[0]["adaptive"] is True


def test_defaults_and_bad_input():
    w = torch.zeros(2, requires_grad=True)
    opt = ASAM([w], torch.optim.SGD, lr=0.1)
    assert opt.param_groups[0]["rho"] == 0.5 and opt.param_groups[0]["adaptive"] is True
    with pytest.raises(ValueError, match="rho"):
        ASAM([w], torch.optim.SGD, rho=-0.5, lr=0.1)
    with pytest.raises(ValueError, match="eta must be a finite number >= 0, got -0.01"):
        ASAM([w], torch.optim.SGD, eta=-0.01, lr=0.1)
    with pytest.raises(TypeError, match="adaptive"):
        SAM([w], torch.optim.SGD, adaptive="yes", lr=0.1)
