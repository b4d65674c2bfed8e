"""Mixed precision on the CPU: bf16 autocast, and torch.amp.GradScaler("cpu") with injected infs."""

import copy

import pytest
import torch
import torch.nn.functional as F

from casam.history import SampleHistory
from casam.optim import ASAM, CASAM, SAM, frozen_bn_stats

GEN_SEED = 0


def problem(batch=16):
    gen = torch.Generator().manual_seed(GEN_SEED)
    # small enough that no op reaches torch's parallel grain size: fast on a busy 2-core machine
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)
    x, y = torch.randn(batch, 1, 6, 6, generator=gen), torch.randint(0, 4, (batch,), generator=gen)
    return model, x, y, torch.arange(batch)


def build(kind, model):
    if kind == "sam":
        return SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9)
    if kind == "asam":
        return ASAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.1, momentum=0.9)
    history = SampleHistory(16, 4, beta=0.5)
    gen = torch.Generator().manual_seed(1)
    history.update(torch.arange(16), 5 * torch.randn(16, 4, generator=gen), torch.randint(0, 4, (16,), generator=gen))
    return CASAM(model.parameters(), torch.optim.SGD, history=history, rho=0.1, lr=0.1, momentum=0.9, warmup_epochs=0, min_clean=2)


def train_step(kind, opt, model, x, y, idx, *, scaler=None, autocast=False, first_hook=None, second_hook=None):
    """One step of any of the three, the way a user loop does it; hooks may corrupt a pass's gradient."""
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if autocast else (lambda: torch.autocast("cpu", enabled=False))
    param = model[1].weight

    def hooked(hook):
        return param.register_hook(hook) if hook is not None else None

    handle = hooked(first_hook)
    with ctx():
        logits = model(x)
    losses = F.cross_entropy(logits.float(), y, reduction="none")
    if kind == "casam":
        opt.first_step(losses, logits=logits, indices=idx, labels=y, scaler=scaler)
    else:
        loss = losses.mean()
        (scaler.scale(loss) if scaler is not None else loss).backward()
        opt.first_step(zero_grad=True, scaler=scaler)
    if handle is not None:
        handle.remove()
    handle = hooked(second_hook)
    with frozen_bn_stats(model), ctx():
        losses2 = F.cross_entropy(model(x).float(), y, reduction="none")
    if kind == "casam":
        opt.second_step(losses2, scaler=scaler)
    else:
        loss2 = losses2.mean()
        (scaler.scale(loss2) if scaler is not None else loss2).backward()
        opt.second_step(zero_grad=True, scaler=scaler)
    if handle is not None:
        handle.remove()
    return losses.detach()


def poison(grad):
    return torch.full_like(grad, float("inf"))


KINDS = ["sam", "asam", "casam"]


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_autocast_trains_close_to_fp32(kind):
    runs = {}
    for autocast in (False, True):
        model, x, y, idx = problem()
        opt = build(kind, model)
        first = [train_step(kind, opt, model, x, y, idx, autocast=autocast) for _ in range(3)][0]
        runs[autocast] = (model, first)
    (ref, _), (model, first) = runs[False], runs[True]
    assert torch.isfinite(first).all()
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    start = problem()[0]
    for p, q, p0 in zip(model.parameters(), ref.parameters(), start.parameters()):
        moved, gap = (q - p0).norm(), (p - q).norm()
        assert moved > 0 and gap < 0.1 * moved  # bf16 changes the digits, not the direction


@pytest.mark.parametrize("kind", KINDS)
def test_scaler_with_power_of_two_scale_changes_nothing(kind):
    # scaling by 2^k and unscaling is exact in float32: the steps must equal the unscaled ones bit for bit
    plain, x, y, idx = problem()
    scaled = copy.deepcopy(plain)
    opt_plain, opt_scaled = build(kind, plain), build(kind, scaled)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=1)
    for _ in range(3):
        train_step(kind, opt_plain, plain, x, y, idx)
        train_step(kind, opt_scaled, scaled, x, y, idx, scaler=scaler)
    assert all(torch.equal(p, q) for p, q in zip(plain.parameters(), scaled.parameters()))
    assert scaler.get_scale() == 2.0**15  # grew after each of the three clean steps


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("which", ["first", "second"])
def test_non_finite_gradient_skips_the_step_and_backs_off(kind, which):
    model, x, y, idx = problem()
    opt = build(kind, model)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    train_step(kind, opt, model, x, y, idx, scaler=scaler)  # a clean step first: momentum buffers exist
    before = copy.deepcopy(model.state_dict())
    state_before = copy.deepcopy(opt.state_dict())
    hooks = {"first_hook": poison} if which == "first" else {"second_hook": poison}
    train_step(kind, opt, model, x, y, idx, scaler=scaler, **hooks)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights bit-identical
    state_after = opt.state_dict()
    for i, s in state_before["state"].items():
        assert torch.equal(s["momentum_buffer"], state_after["state"][i]["momentum_buffer"])
    assert scaler.get_scale() == 2.0**9
    assert not opt.perturbed
    train_step(kind, opt, model, x, y, idx, scaler=scaler)  # and training carries on
    assert not torch.equal(before["1.weight"], model.state_dict()["1.weight"])


def test_closure_step_skips_the_second_pass_on_inf():
    model, x, y, _ = problem()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    before = copy.deepcopy(model.state_dict())
    calls = []

    def closure():
        calls.append(1)
        loss = F.cross_entropy(model(x), y) * float("inf")
        scaler.scale(loss).backward()
        return loss

    opt.step(closure, scaler=scaler)
    assert len(calls) == 1 and scaler.get_scale() == 2.0**9
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_disabled_scaler_is_a_no_op():
    plain, x, y, idx = problem()
    other = copy.deepcopy(plain)
    a, b = build("casam", plain), build("casam", other)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    for _ in range(2):
        train_step("casam", a, plain, x, y, idx)
        train_step("casam", b, other, x, y, idx, scaler=scaler)
    assert all(torch.equal(p, q) for p, q in zip(plain.parameters(), other.parameters()))
